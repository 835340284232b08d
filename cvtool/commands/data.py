"""`cvtool data synth` (generate the synthetic shapes data) and `cvtool data check` (find bad files)."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.markup import escape

from cvtool.config import runner
from cvtool.errors import CvtoolError

from . import components as C
from . import folder_defaults

log = logging.getLogger("cvtool.data")


def synth(overrides: list[str]) -> str:
    """Generate the composed config's synthetic dataset (e.g. `dataset=shapes_det`); a no-op when up to date."""
    from cvtool.data.shapes import ensure_shapes

    cfg = runner.compose("data", overrides)
    if not cfg.dataset.get("synth"):
        raise CvtoolError(f"dataset '{cfg.dataset.name}' is not synthetic", where=f"dataset={cfg.dataset.name}",
                          fix="use dataset=shapes, shapes_det or shapes_seg")
    params = C.plain(cfg.dataset.synth)
    root = ensure_shapes(params.pop("kind"), cfg.dataset.root, **params)
    Console().print(f"[bold]{escape(cfg.dataset.name)}[/bold] ready at {escape(str(root))}")
    return str(root)


def check(overrides: list[str]) -> dict:
    """Read every annotation and decode every image of the training and evaluation splits; report every problem
    (one line each), exit 2 if any."""
    cfg = runner.compose("data", overrides)
    settings = folder_defaults.resolve(cfg)  # what a run would use for the `auto` keys (printed below)
    task = C.task_from(cfg)
    console, bad, counts, files = Console(), [], {}, {}
    for split in dict.fromkeys([cfg.dataset.train_split, cfg.dataset.split]):
        problems: list[str] = []  # annotation problems (detection), all of them
        dataset = task.open_split(split, None, skip_invalid=False, seed=cfg.seed, problems=problems)
        for problem in problems:
            bad.append(problem)
            console.print(f"[red]bad[/red] {escape(problem)}")
        counts[split] = len(dataset)
        for index in range(len(dataset)):
            try:
                dataset[index]
            except CvtoolError as err:
                bad.append(err.line())
                console.print(f"[red]bad[/red] {escape(err.line())}")
        console.print(escape(f"{split}: {len(dataset)} items, {len(dataset.classes)} classes ({dataset.source})"))
        if getattr(dataset, "files", None):
            files[split] = list(dict.fromkeys(dataset.files))  # (person crops share their image's file)
    if files:
        print_image_statistics(console, cfg, files)
    if settings is not None:
        console.print(escape(settings.report()))
    if bad:
        raise CvtoolError(f"{len(bad)} invalid item(s) found", where=cfg.dataset.root,
                          fix="fix or delete the files listed above, or train with data.skip_invalid=true")
    console.print("[green]all items readable[/green]")
    return counts


def print_image_statistics(console: Console, cfg, files: dict[str, list[str]]) -> None:
    """Sizes and colour modes of every image file (headers only) and the mean/std a sample of the first split's
    images suggests (dataset.derive.sample of them where the dataset has that key, else all)."""
    from cvtool.data.folder_profile import describe_sizes, pixel_stats, read_headers, sample_files

    everything = [path for paths in files.values() for path in paths]
    profile = read_headers(everything)
    console.print(escape(f"images: {describe_sizes(profile)}"))
    training = next(iter(files.values()))
    count = cfg.dataset.derive.sample if "derive" in cfg.dataset else len(training)
    channels = 1 if profile.grayscale else 3
    mean, std, used = pixel_stats(sample_files(training, count, cfg.seed), channels)
    console.print(escape(f"suggested normalisation (pixels in [0, 1], {used} sampled {next(iter(files))} images): "
                         f"dataset.mean={mean} dataset.std={std}"))
