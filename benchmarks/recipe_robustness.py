"""Do the default recipes hold on this machine? Each default `cvtool train` run for several seeds, in fp32
(`hardware.amp=off`) and in the precision `hardware.amp=auto` picks here (bf16 on CPUs with native bf16, unless
the model's config keeps it in fp32), scored against the targets of issue 22: every run over its floor and
within its time, the mean over its floor too. Prints one table with the machine it was measured on.

Each run is a full `cvtool train` in a subprocess, so the whole matrix takes hours on 2 CPU cores. Finished runs
are kept in --results (JSON lines, keyed by machine, default, precision and seed) and not run again, so the
benchmark can be run piecewise and resumed. A record with "contended": true was timed while other work ran on
the machine (its time is an upper bound; tables mark it †):

    python benchmarks/recipe_robustness.py                          # everything (hours)
    python benchmarks/recipe_robustness.py --only segmentation unet --seeds 0 1 --precisions auto
    python benchmarks/recipe_robustness.py --table                  # print the table of what was measured
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cvtool.commands import components as C
from cvtool.config import runner
from cvtool.engine.hardware import machine_summary


@dataclass(frozen=True)
class Default:
    overrides: tuple[str, ...]
    floor: float  # every run's metric >= floor
    mean_floor: float  # the mean over seeds >= mean_floor
    minutes: float  # every run's wall-clock time (the whole command) <= minutes


DEFAULTS = {
    "classification": Default((), 0.96, 0.97, 2),
    "detection": Default(("task=detection",), 0.88, 0.90, 6),
    "segmentation": Default(("task=segmentation",), 0.88, 0.90, 5),
    "unet": Default(("task=segmentation", "model=unet"), 0.88, 0.90, 5),
    "faster_rcnn": Default(("task=detection", "model=faster_rcnn"), 0.45, 0.55, 10),
}
PRECISIONS = {"fp32": "hardware.amp=off", "auto": "hardware.amp=auto"}


def auto_precision(default: Default) -> str:
    """What `hardware.amp=auto` trains this default in on this machine: bf16, fp16 or fp32."""
    cfg = runner.compose("train", list(default.overrides))
    dtype = C.setup(cfg).amp_dtype
    return "fp32" if dtype is None else str(dtype).removeprefix("torch.").replace("bfloat16", "bf16").replace(
        "float16", "fp16")


def recipe_id(default: Default) -> str:
    """A short hash of the config this default composes to (seed and precision aside): stored runs of another
    recipe are neither reused nor tabled once a config changes."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(runner.compose("train", list(default.overrides)), resolve=True)
    for key in ("seed", "paths"):
        cfg.pop(key, None)
    cfg.get("hardware", {}).pop("amp", None)
    for key in ("recipe", "detector", "segmenter"):  # read only through interpolations, resolved above: another
        cfg["dataset"].pop(key, None)                # model's row is not this default's recipe
    return hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:10]


def current(records: list[dict], machine: str, recipes: dict[str, str]) -> list[dict]:
    """The stored runs of this machine and of each default's current recipe."""
    return [r for r in records if r["machine"] == machine and r.get("recipe") == recipes[r["default"]]]


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append(path: Path, records: list[dict], record: dict) -> None:
    records.append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(record) + "\n")


def quality_benchmark(doc: str, runs: dict[str, Default], measure, table, results: str, report) -> None:
    """The command line of a per-issue quality benchmark: `measure(name, precision, seed, dtype, recipe)` for each
    run, precision and seed not yet in the results file (JSON lines, kept per machine and recipe), then
    `table(records)`; `report(record)` is the line printed after each run."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(runs), default=list(runs))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--precisions", nargs="*", choices=sorted(PRECISIONS), default=list(PRECISIONS))
    parser.add_argument("--results", type=Path, default=Path(results))
    parser.add_argument("--table", action="store_true", help="print the table of the stored results only")
    args = parser.parse_args()
    machine = machine_summary()
    recipes = {name: recipe_id(run) for name, run in runs.items()}
    records = [r for r in load(args.results) if r["machine"] == machine and r["recipe"] == recipes[r["run"]]]
    done = {(r["run"], r["precision"], r["seed"]) for r in records}
    for name in [] if args.table else args.only:
        resolved = {"fp32": "fp32", "auto": auto_precision(runs[name])}
        for precision in args.precisions:
            for seed in [s for s in args.seeds if (name, precision, s) not in done]:
                print(f"cvtool train {' '.join(runs[name].overrides)} {PRECISIONS[precision]} seed={seed} ...",
                      flush=True)
                record = measure(name, precision, seed, resolved[precision], recipes[name])
                print(f"  {report(record)}", flush=True)
                append(args.results, records, record)
    table(records)


def cvtool_run(args: list[str]) -> tuple[dict, float]:
    """`cvtool train ARGS` in a subprocess (the whole command is what the time targets bound); its metrics.json
    and wall-clock seconds."""
    with tempfile.TemporaryDirectory() as runs:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cvtool", "train", *args, f"paths.runs={runs}"], check=True,
                       stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        return json.loads(next(Path(runs).rglob("metrics.json")).read_text()), seconds


def measure(name: str, precision: str, seed: int, resolved: str, recipe: str) -> dict:
    metrics, seconds = cvtool_run([*DEFAULTS[name].overrides, PRECISIONS[precision], f"seed={seed}"])
    warnings = [w["kind"] for w in metrics.get("warnings", [])]
    return {"machine": machine_summary(), "default": name, "recipe": recipe, "precision": precision, "dtype": resolved,
            "seed": seed, "metric": metrics["metric"], "value": metrics["best"], "seconds": seconds,
            "warnings": warnings}


def verdict(default: Default, value: float, seconds: float) -> str:
    problems = [f"< {default.floor}"] * (value < default.floor) + [f"> {default.minutes:g} min"] * (
        seconds > 60 * default.minutes)
    return "ok" if not problems else "FAIL " + ", ".join(problems)


def table(records: list[dict], machine: str, recipes: dict[str, str]) -> None:
    """One row per run of the current recipes, then per default and precision: min, mean and whether the targets
    hold."""
    rows = current(records, machine, recipes)
    print(f"\nMachine: {machine}")
    print(f"{'default':<15}{'precision':<12}{'seed':>5}{'metric':>10}{'value':>8}{'time':>9}  verdict")
    for r in sorted(rows, key=lambda r: (list(DEFAULTS).index(r["default"]), r["precision"], r["seed"])):
        note = f"  warned: {', '.join(r['warnings'])}" if r["warnings"] else ""
        note += "  (timed with other work running: an upper bound)" if r.get("contended") else ""
        print(f"{r['default']:<15}{r['precision'] + ' (' + r['dtype'] + ')':<12}{r['seed']:>5}{r['metric']:>10}"
              f"{r['value']:>8.3f}{r['seconds'] / 60:>7.2f} m  "
              f"{verdict(DEFAULTS[r['default']], r['value'], r['seconds'])}{note}")
    print(f"\n{'default':<15}{'precision':<12}{'runs':>5}{'min':>8}{'mean':>8}{'max time':>10}  targets")
    for name, precision, group in groups(rows):
        default, values = DEFAULTS[name], [r["value"] for r in group]
        low, mean, slowest = min(values), statistics.mean(values), max(r["seconds"] for r in group)
        print(f"{name:<15}{precision + ' (' + group[0]['dtype'] + ')':<12}{len(group):>5}{low:>8.3f}{mean:>8.3f}"
              f"{slowest / 60:>8.2f} m  {'held' if held(default, group) else 'NOT held'} ({targets(default)})")


def groups(rows: list[dict]) -> list[tuple[str, str, list[dict]]]:
    """(default, precision, its runs by seed) for every pair measured."""
    found = [(name, precision, sorted((r for r in rows if (r["default"], r["precision"]) == (name, precision)),
                                      key=lambda r: r["seed"])) for name in DEFAULTS for precision in PRECISIONS]
    return [(name, precision, group) for name, precision, group in found if group]


def held(default: Default, group: list[dict]) -> bool:
    values = [r["value"] for r in group]
    return (min(values) >= default.floor and statistics.mean(values) >= default.mean_floor
            and max(r["seconds"] for r in group) <= 60 * default.minutes)


def targets(default: Default) -> str:
    return f"every run >= {default.floor}, mean >= {default.mean_floor}, <= {default.minutes:g} min"


def markdown(records: list[dict], machine: str, recipes: dict[str, str]) -> None:
    """The summary as a Markdown table (the one in docs/results.md), one row per default and precision."""
    rows = current(records, machine, recipes)
    print(f"Machine: {machine}\n")
    print("| default | precision | seeds | metric per seed | min | mean | time per run | targets | |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, precision, group in groups(rows):
        default, values = DEFAULTS[name], [r["value"] for r in group]
        minutes = [r["seconds"] / 60 for r in group]
        span = "–".join(dict.fromkeys(f"{m:.1f}" for m in (min(minutes), max(minutes))))  # "4.4–4.8" or "16.8"
        command = " ".join(("cvtool train", *default.overrides))
        print(f"| `{command}` | {precision} ({group[0]['dtype']}) | {' / '.join(str(r['seed']) for r in group)} | "
              f"{group[0]['metric']} {' / '.join(f'{v:.3f}' for v in values)} | {min(values):.3f} | "
              f"{statistics.mean(values):.3f} | {span} min"
              f"{' †' if any(r.get('contended') for r in group) else ''} | {targets(default)} | "
              f"{'held' if held(default, group) else '**not held**'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(DEFAULTS), default=list(DEFAULTS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--precisions", nargs="*", choices=sorted(PRECISIONS), default=list(PRECISIONS))
    parser.add_argument("--results", type=Path, default=Path("runs/benchmarks/recipe_robustness.jsonl"))
    parser.add_argument("--table", action="store_true", help="print the table of the stored results only")
    parser.add_argument("--markdown", action="store_true", help="print the summary of the stored results as the "
                                                                "Markdown table of docs/results.md only")
    args = parser.parse_args()
    machine = machine_summary()
    recipes = {name: recipe_id(default) for name, default in DEFAULTS.items()}
    records = load(args.results)
    done = {(r["default"], r["precision"], r["seed"]) for r in current(records, machine, recipes)}
    if args.markdown:
        return markdown(records, machine, recipes)
    for name in [] if args.table else args.only:
        resolved = {"fp32": "fp32", "auto": auto_precision(DEFAULTS[name])}
        for precision in args.precisions:
            for seed in args.seeds:
                if (name, precision, seed) in done:
                    continue
                if precision == "auto" and resolved["auto"] == "fp32":  # auto is fp32 here: the fp32 run is it
                    twin = [r for r in current(records, machine, recipes)
                            if (r["default"], r["precision"], r["seed"]) == (name, "fp32", seed)]
                    if twin:
                        append(args.results, records, {**twin[0], "precision": "auto"})
                        continue
                print(f"cvtool train {' '.join(DEFAULTS[name].overrides)} {PRECISIONS[precision]} seed={seed} "
                      f"({resolved[precision]}) ...", flush=True)
                record = measure(name, precision, seed, resolved[precision], recipes[name])
                print(f"  {record['metric']} {record['value']:.3f} in {record['seconds'] / 60:.2f} min", flush=True)
                append(args.results, records, record)
    table(records, machine, recipes)


if __name__ == "__main__":
    main()
