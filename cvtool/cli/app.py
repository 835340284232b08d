"""The `cvtool` Typer app: parses argv and hands Hydra overrides to the Python API (`cvtool.api`)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import typer

from cvtool import __version__, api
from cvtool.config.locate import GROUPS, group_choices
from cvtool.errors import CvtoolError, ExitRequest

app = typer.Typer(add_completion=True, no_args_is_help=True, rich_markup_mode="rich",
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Train, evaluate, export and explain convolutional networks for computer vision.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the composed configuration.")
data_app = typer.Typer(no_args_is_help=True, help="Generate and check datasets.")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")

_state = {"debug": False}
OVERRIDES = typer.Argument(None, help="Hydra overrides: key=value, group=choice, +new_key=value.", show_default=False)
MULTIRUN = typer.Option(False, "-m", "--multirun", help="Sweep: comma-separated values run one job each.")


def groups_epilog() -> str:
    lines = ["[bold]Config groups[/bold] (choose with GROUP=NAME):"]
    lines += [f"  {group}: {', '.join(group_choices(group)) or '-'}" for group in GROUPS]
    lines.append("Example: cvtool train task=classification model=resnet18 model.small_input=true trainer.epochs=5")
    return "\n\n".join(lines)


def _command(module: str) -> ModuleType:
    """A command module, imported when its command runs (torch stays out of --help)."""
    return importlib.import_module(f"cvtool.commands.{module}")


def _invoke(call: Callable[[], Any]) -> Any:
    """Run a command; user errors become one line and exit code 2."""
    try:
        return call()
    except CvtoolError as err:
        if _state["debug"]:
            raise
        typer.echo(f"error: {err.line()}", err=True)
        raise typer.Exit(2) from None
    except ExitRequest as request:
        typer.echo(request.message, err=True)
        raise typer.Exit(request.code) from None


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"cvtool {__version__}")
        raise typer.Exit()


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for user errors."),
          version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="Print the version and exit.")) -> None:
    _state["debug"] = debug


@app.command(epilog=groups_epilog())
def train(overrides: list[str] = OVERRIDES, multirun: bool = MULTIRUN) -> None:
    """Train a model (default: classification on the embedded shapes data). resume=PATH|auto continues a run."""
    _invoke(lambda: api.train(overrides, multirun=multirun))


@app.command("eval", epilog=groups_epilog())
def evaluate(overrides: list[str] = OVERRIDES, multirun: bool = MULTIRUN) -> None:
    """Evaluate a model (ckpt=PATH, or model_file=PATH exported by `cvtool export`) or stored predictions
    (predictions=PATH): VOC07/VOC10 AP, COCO via pycocotools, mIoU, top-k. Writes metrics.json (and json=PATH),
    prints the protocol and a table."""
    _invoke(lambda: api.evaluate(overrides, multirun=multirun))


@app.command(epilog=groups_epilog())
def predict(overrides: list[str] = OVERRIDES) -> None:
    """Run a checkpoint (ckpt=PATH) or an exported model (model_file=PATH.onnx|.pt|.pt2) on source=IMAGE|DIR
    (default: the eval split); writes result files that `cvtool eval predictions=` reads, and overlay images.
    source=VIDEO.mp4|WEBCAM_INDEX|rtsp://URL: annotated.mp4 and frames.jsonl (video.* keys)."""
    _invoke(lambda: api.predict(overrides))


@app.command(epilog=groups_epilog())
def export(overrides: list[str] = OVERRIDES) -> None:
    """Export a checkpoint (ckpt=PATH) to format=onnx|torchscript|torch_export [opset=18] [dynamic=true]
    [input_size=H,W], verified against the eager model on two inputs (exit code 1 if they differ); writes the file
    and a sidecar JSON of its pre/postprocessing."""
    _invoke(lambda: api.export(overrides))


@app.command(epilog=groups_epilog())
def visualize(method: str = typer.Argument(..., help="saliency, guided_backprop, deconvnet, gradcam, guided_gradcam, "
                                                       "occlusion, filters, activations, class_model, deepdream, "
                                                       "adversarial, predictions, curves, dataset"),
              overrides: list[str] = OVERRIDES) -> None:
    """Explain a classifier's decisions (ckpt=PATH, source=IMAGE|DIR or the eval split): maps as .npy and PNG,
    one input | map | overlay figure; visualize.evaluate=true scores the maps (pointing game, deletion AUC)."""
    _invoke(lambda: api.visualize(method, overrides))


@app.command(epilog=groups_epilog())
def inspect(overrides: list[str] = OVERRIDES) -> None:
    """Per-layer output shapes, parameters, multiply-adds and receptive fields of model=NAME (or ckpt=PATH) at
    input_size=H,W (default: the task's reference size: 224 classification, 800 detection, 520 segmentation)."""
    _invoke(lambda: api.inspect(overrides))


@app.command()
def models(pattern: str = typer.Argument("*", help="fnmatch pattern, e.g. 'resnet*'"),
           task: str = typer.Option(None, "--task", help="only models of this task")) -> None:
    """List the registered models with their parameter counts."""
    _invoke(lambda: _command("models").main(pattern, task))


@config_app.command("show", epilog=groups_epilog())
def config_show(command: str = typer.Argument("train", help="train, eval, predict, ..."),
                overrides: list[str] = OVERRIDES) -> None:
    """Print the composed config of COMMAND with the given overrides (nothing runs)."""
    _invoke(lambda: _command("config_show").main(command, overrides or []))


@data_app.command("synth", epilog=groups_epilog())
def data_synth(overrides: list[str] = OVERRIDES) -> None:
    """Generate the synthetic shapes dataset of the composed config (e.g. task=detection) under datasets/."""
    _invoke(lambda: _command("data").synth(overrides or []))


@data_app.command("check", epilog=groups_epilog())
def data_check(overrides: list[str] = OVERRIDES) -> None:
    """Read every item of the configured dataset splits and report unreadable/invalid files."""
    _invoke(lambda: _command("data").check(overrides or []))


@data_app.command("proposals", epilog=groups_epilog())
def data_proposals(overrides: list[str] = OVERRIDES) -> None:
    """Region proposals for a detection split: method=selective_search|edge|kmeans (or a proposal file to check and
    convert) -> Fast R-CNN .mat / detectron2 / MMDetection file + recall table and plot (task.proposals.* keys)."""
    _invoke(lambda: _command("proposals").main(overrides or []))


@app.command("env")
def environment(as_json: bool = typer.Option(False, "--json", help="One JSON object instead of aligned text.")) -> None:
    """Versions (cvtool, Python, torch, CUDA, cuDNN, dependencies) and hardware (CPU flags, GPUs) for a bug
    report."""
    _invoke(lambda: _command("environment").main(as_json))


def main() -> None:
    try:
        app(prog_name="cvtool")  # also under `python -m cvtool`: the name completion scripts are installed for
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
