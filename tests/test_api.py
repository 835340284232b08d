"""The Python API (`from cvtool import train, ...`), `cvtool --version`, `cvtool env` and shell completion."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import read_json
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import cvtool
from cvtool import api
from cvtool.cli.app import app
from cvtool.commands import environment
from cvtool.errors import CvtoolError

PAGE = Path(__file__).parents[1] / "docs" / "python-api.md"


def page_example() -> str:
    return re.search(r"```python\n(.*?)```", PAGE.read_text(), re.S).group(1)


def test_python_api_page_example_trains_evaluates_predicts_and_exports(tiny, tmp_path, monkeypatch):
    """The page's code, as written, with the tiny data and one epoch appended to each call's overrides (and the
    export in TorchScript, ~3x faster than ONNX's; tests/test_export.py covers every format)."""
    forced = [*tiny, "trainer.epochs=1", "data.limit=60", "logger=[]", "plots=false", "overlays=2"]
    for name, extra in (("train", []), ("evaluate", []), ("predict", []), ("export", ["format=torchscript"])):
        real = getattr(api, name)
        monkeypatch.setattr(api, name, lambda real=real, extra=extra, **kw: real(api.render(**kw) + forced + extra))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(page_example(), namespace)
    run, metrics, predicted, exported = (namespace[k] for k in ("run", "metrics", "predicted", "exported"))
    run_dir = Path(run["run_dir"])
    assert run_dir.parent == tmp_path / "runs" / "classification" / "train" and run["epochs"] == 1
    assert {**read_json(run_dir / "metrics.json"), "run_dir": str(run_dir)} == run  # the file has no run_dir
    assert type(metrics) is not list and metrics == read_json(Path(metrics.run_dir) / "metrics.json")
    assert set(metrics) == {"top1", "top5", "num_samples", "per_class_acc"} and metrics["num_samples"] == 60
    assert {Path(f).name for f in predicted["files"]} == {"predictions.csv", "logits.npy", "targets.npy"}
    assert all(Path(f).is_file() for f in predicted["files"]) and predicted["num_images"] == 60
    assert Path(exported["path"]).suffix == ".pt" and Path(exported["sidecar"]).is_file()
    assert all(check["passed"] for check in exported["checks"])


def test_keyword_overrides_render_as_hydra_overrides():
    rendered = api.render(["task=detection"], model="yolo", trainer={"epochs": 3, "ema": {"enabled": True}},
                          name=None, input_size=(320, 320), source=Path("my photos/cat.jpg"), json="3",
                          resume="a,b", seed=api.sweep(0, 1), opset=1e-5, visualize={"epsilons": [0.0, None, "x y"]},
                          **{"optim.lr": 0.001, "+extra": "it's\\", "dataset.classes": ["null", "ok"]})
    assert rendered == ["task=detection", "model=yolo", "trainer.epochs=3", "trainer.ema.enabled=true", "name=null",
                        "input_size=[320,320]", "source=my photos/cat.jpg", "json='3'", "resume='a,b'", "seed=0,1",
                        "opset=1e-05", "visualize.epsilons=[0.0,null,x y]", "optim.lr=0.001",
                        "+extra='it\\'s\\\\'", "dataset.classes=['null',ok]"]
    assert api.render("task=detection 'name=my run'", seed=2) == ["task=detection", "name=my run", "seed=2"]


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(st.text(max_size=12))
def test_any_string_reads_back_unchanged_bare_or_in_a_list(text):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for value in (text, [text, 1]):
        assert parser.parse_override(f"k={api.value_text(value, 'k')}").value() == value


def test_user_errors_raise_cvtool_error_not_system_exit(tmp_path):
    with pytest.raises(CvtoolError, match="unknown config key 'trainer.epoch'.*did you mean 'trainer.epochs'"):
        api.train(trainer={"epoch": 1}, paths={"runs": tmp_path})
    with pytest.raises(CvtoolError, match=r"a object is not a config value \(seed\)"):
        api.train(seed=object())
    with pytest.raises(CvtoolError, match="override 3 is not a string"):
        api.evaluate(["ckpt=x", 3])
    assert not (tmp_path / "classification").exists()


def test_evaluate_multirun_returns_one_metrics_dict_per_job(tmp_path):
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 5, 40)
    np.save(tmp_path / "logits.npy", rng.normal(size=(40, 5)).astype(np.float32) + 3 * np.eye(5)[targets])
    np.save(tmp_path / "targets.npy", targets)
    results = api.evaluate(multirun=True, predictions=tmp_path / "logits.npy", targets=tmp_path / "targets.npy",
                           task={"topk": api.sweep(1, 3)}, paths={"runs": tmp_path / "runs"}, plots=False)
    first, second = results
    assert first["top5"] == first["top1"] < second["top5"]  # its "top5" entry is the top-k of k = task.topk
    assert [Path(r.run_dir).name for r in results] == ["0", "1"]  # runs/classification/multirun/<time>/<job>
    assert all(read_json(Path(r.run_dir) / "metrics.json") == r for r in results)


def test_import_cvtool_loads_neither_torch_nor_hydra():
    code = ("import sys, cvtool; from cvtool import train, evaluate, predict, export; "
            "print('torch' in sys.modules, 'hydra' in sys.modules, export.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "cvtool.api"]


def test_cvtool_export_is_the_api_function_after_the_export_formats_load():
    import cvtool.exporting.formats  # noqa: F401 - the formats live in cvtool.exporting, not under the API's name
    from cvtool import export

    assert export is api.export and cvtool.export is api.export and cvtool.train is api.train


def test_version_prints_the_package_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"cvtool {cvtool.__version__}\n"


def test_env_reports_versions_and_hardware_as_text_and_json():
    import torch

    text = CliRunner().invoke(app, ["env"])
    assert text.exit_code == 0
    lines = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in text.output.splitlines())
    assert lines["cvtool"] == cvtool.__version__ and lines["torch"].startswith(torch.__version__)
    assert lines["cuDNN"] and lines["CPU flags"] and lines["bf16 autocast"].startswith("CPU: ")
    assert lines["hydra-core"][0].isdigit() and "mlflow" in lines and "submitit" in lines
    report = json.loads(CliRunner().invoke(app, ["env", "--json"]).output)
    assert report["torch"] == torch.__version__ and report["cpu_cores"] >= 1
    assert report["cuda_available"] == torch.cuda.is_available() and len(report["gpus"]) == torch.cuda.device_count()
    assert report["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(report["bf16_autocast_fast"]) == {"cpu", "cuda"} and report["packages"]["numpy"] == np.__version__


def test_env_without_proc_cpuinfo_reports_flags_as_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(environment, "CPUINFO", tmp_path / "absent")
    assert environment.report()["cpu_flags"] is None
    assert "unknown (no /proc/cpuinfo)" in CliRunner().invoke(app, ["env"]).output
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 avx512f amx_tile\n")
    monkeypatch.setattr(environment, "CPUINFO", tmp_path / "cpuinfo")
    assert environment.cpu_flags() == ["sse4_2", "avx2", "avx512f", "amx_tile"]


def test_shell_completion_script_and_completions():
    runner = CliRunner()
    script = runner.invoke(app, ["--show-completion", "bash"], prog_name="cvtool")
    assert script.exit_code == 0 and "_CVTOOL_COMPLETE=complete_bash" in script.output
    words = runner.invoke(app, [], prog_name="cvtool", env={"_CVTOOL_COMPLETE": "complete_bash",
                                                             "COMP_WORDS": "cvtool e", "COMP_CWORD": "1"})
    assert words.output.split() == ["eval", "export", "env"]
