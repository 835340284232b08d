"""Experiment tracking: `logger=[...]` picks the backends; an MLflow run lives in a local SQLite store, offline,
and a resumed training continues the same MLflow run."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch
from conftest import only_run_dir
from typer.testing import CliRunner

from cvtool import __version__
from cvtool.cli.app import app
from cvtool.commands import train
from cvtool.commands.loggers import default_run_name, metrics_logger
from cvtool.config import runner
from cvtool.engine.metrics_log import read_records
from cvtool.errors import ExitRequest


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for this module's runs (creating one costs seconds of schema migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def mlflow_runs(store: str, experiment: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def history(store: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(tracking_uri=store).get_metric_history(run_id, key))


def jsonl(run: Path, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in read_records(run / "metrics.jsonl") if key in r]


def one_error_line(*args: str) -> str:
    result = CliRunner().invoke(app, ["train", *args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_mlflow_run_holds_the_metrics_params_config_and_best_checkpoint_offline(tiny, tmp_path, store,
                                                                                 monkeypatch):
    from mlflow import MlflowClient

    connections = []
    monkeypatch.setattr(socket.socket, "connect", lambda sock, address: connections.append(address))
    train.main([*tiny, "data.limit=30", "logger=[mlflow]", f"mlflow.tracking_uri={store}", "mlflow.experiment=full",
                "mlflow.log_checkpoint=true", "plots=false"])
    assert connections == []
    run_dir = only_run_dir(tmp_path / "runs" / "classification" / "train")
    assert not (run_dir / "tensorboard").exists()
    run, = mlflow_runs(store, "full")
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert len(jsonl(run_dir, "val/top1")) == 2
    for key in ("val/top1", "train/loss", "lr"):
        assert history(store, run.info.run_id, key) == jsonl(run_dir, key)
    params = run.data.params
    assert params["trainer.epochs"] == "2" and params["logger"] == "[mlflow]" and params["data.limit"] == "30"
    assert (params["task"], params["model"], params["seed"], params["world_size"]) == (
        "classification", "shapes_cnn", "0", "1")
    assert run.data.tags["cvtool.version"] == __version__
    best = run_dir / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)
    assert state["tracking"] == {"mlflow": {"run_id": run.info.run_id}}
    client = MlflowClient(tracking_uri=store)
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / "got"))
    assert Path(config).read_text() == state["config"]
    stored = client.download_artifacts(run.info.run_id, "checkpoints/best.pt", str(tmp_path / "got"))
    assert Path(stored).read_bytes() == best.read_bytes()


def test_interrupted_run_resumed_continues_the_same_mlflow_run_without_repeated_steps(tiny, tmp_path, store):
    common = [*tiny, "data.limit=30", "logger=[mlflow]", f"mlflow.tracking_uri={store}",
              "mlflow.experiment=resumed", "plots=false", "name=r"]
    with pytest.raises(ExitRequest):
        train.main([*common, "trainer.stop_after=1"])
    run, = mlflow_runs(store, "resumed")
    assert run.info.status == "KILLED" and len(history(store, run.info.run_id, "val/top1")) == 1
    train.main([*common, "resume=auto", "trainer.log_every=1"])
    again, = mlflow_runs(store, "resumed")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    run_dir = tmp_path / "runs" / "classification" / "train" / "r"
    for key in ("val/top1", "train/loss"):
        logged = history(store, run.info.run_id, key)
        assert logged == jsonl(run_dir, key) and len({step for step, _ in logged}) == len(logged)
    assert len(history(store, run.info.run_id, "val/top1")) == 2
    # MLflow keeps a param's first value: the resumed run's change is a tag beside it
    assert again.data.params["trainer.log_every"] == "2" and again.data.tags["resumed.trainer.log_every"] == "1"


def test_mlflow_logger_without_mlflow_installed_names_the_pip_install(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` sees when it is not installed
    line = one_error_line(*tiny, "logger=[tensorboard,mlflow]")
    assert line.startswith("error: logger mlflow needs the mlflow package") and "pip install 'cvtool[mlflow]'" in line


def test_unknown_logger_is_one_line_listing_the_choices(tiny):
    line = one_error_line(*tiny, "logger=[tensorbord]")
    assert line == ("error: unknown logger 'tensorbord' (logger) — did you mean 'tensorboard'? choose from: "
                    "tensorboard, mlflow (e.g. 'logger=[tensorboard,mlflow]'; logger=[] writes metrics.jsonl only)")


def test_tensorboard_is_the_default_logger_and_logger_lists_parse(tmp_path):
    cfg = runner.compose("train", [f"paths.runs={tmp_path}"])
    assert list(cfg.logger) == ["tensorboard"]
    logger = metrics_logger(cfg, tmp_path)
    with logger:
        logger.log({"step": 1, "epoch": 0.5, "train/loss": 0.5}, 1)
    assert list(logger.backends) == ["tensorboard"] and list((tmp_path / "tensorboard").glob("events.out.*"))
    assert read_records(tmp_path / "metrics.jsonl") == [{"step": 1, "epoch": 0.5, "train/loss": 0.5}]
    assert list(runner.compose("train", ["logger=[tensorboard,mlflow]"]).logger) == ["tensorboard", "mlflow"]
    assert metrics_logger(runner.compose("train", ["logger=[]"]), tmp_path).backends == {}


def test_a_sweep_job_is_named_after_its_sweep_and_job_number_in_mlflow():
    assert default_run_name(Path("runs/classification/multirun/2026-01-31_12-00-00/3")) == "2026-01-31_12-00-00/3"
    assert default_run_name(Path("runs/classification/train/2026-01-31_12-00-00")) == "2026-01-31_12-00-00"
    assert default_run_name(Path("runs/classification/train/42")) == "42"
