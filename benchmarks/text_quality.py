"""Does the default text-recognition run hold issue 27's target on this machine, and how does the dictionary
classifier compare? `cvtool train task=text` (CRNN + CTC) and `cvtool train task=text model=word_classifier`
(Jaderberg et al.'s dictionary classifier over the 1,000 training words) for several seeds, in fp32 and in the
precision `hardware.amp=auto` picks here. Each trained model is evaluated on both held-out splits of the synthetic
words: `test` (words that never occur in training) and `val` (new renderings of the training words). Target: CRNN
word accuracy (ignoring case and symbols) >= 0.90 on `test` within 8 minutes (the whole train command). Finished
runs are kept in --results (JSON lines) and not run again, so the benchmark can be run piecewise:

    python benchmarks/text_quality.py                             # crnn and word_classifier, seeds 0-2, fp32 and auto
    python benchmarks/text_quality.py --only crnn --seeds 0 --precisions auto
    python benchmarks/text_quality.py --table                     # the table of what was measured
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recipe_robustness import PRECISIONS, Default, quality_benchmark

from cvtool.engine.hardware import machine_summary

RUNS = {"crnn": Default(("task=text",), 0.90, 0.90, 8),
        "word_classifier": Default(("task=text", "model=word_classifier"), 0.0, 0.0, 8)}
SPLITS = ("test", "val")


def cvtool(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cvtool", *args], check=True, stdout=subprocess.DEVNULL)


def measure(name: str, precision: str, seed: int, resolved: str, recipe: str) -> dict:
    """Train (timed: the whole command), then evaluate best.pt on both held-out splits."""
    overrides = [*RUNS[name].overrides, PRECISIONS[precision], f"seed={seed}"]
    with tempfile.TemporaryDirectory() as runs:
        start = time.perf_counter()
        cvtool("train", *overrides, f"paths.runs={runs}")
        seconds = time.perf_counter() - start
        trained = json.loads(next(Path(runs).rglob("metrics.json")).read_text())
        ckpt = next(Path(runs).rglob("best.pt"))
        metrics = {}
        for split in SPLITS:
            out = Path(runs) / f"{split}.json"
            cvtool("eval", f"ckpt={ckpt}", f"dataset.split={split}", f"paths.runs={runs}", f"json={out}",
                   "plots=false")
            metrics[split] = json.loads(out.read_text())
    return {"machine": machine_summary(), "run": name, "recipe": recipe, "precision": precision, "dtype": resolved,
            "seed": seed, "best_epoch": trained["best_epoch"], "seconds": seconds,
            **{f"{split}_{mode}": metrics[split]["word_acc"][mode] for split in SPLITS
               for mode in ("exact", "ignore_case_symbol")},
            **{f"{split}_ned": metrics[split]["one_minus_ned"] for split in SPLITS},
            "warnings": [w["kind"] for w in trained.get("warnings", [])]}


def table(records: list[dict]) -> None:
    print(f"machine: {machine_summary()}")
    print(f"{'run':<16}{'precision':<12}{'seed':>5}{'test acc':>9}{'1-NED':>7}{'val acc':>9}{'1-NED':>7}"
          f"{'minutes':>9}  target (crnn: test acc >= 0.90, <= 8 min)")
    for r in sorted(records, key=lambda r: (list(RUNS).index(r["run"]), r["precision"], r["seed"])):
        ok = r["test_ignore_case_symbol"] >= RUNS[r["run"]].floor and r["seconds"] <= 60 * RUNS[r["run"]].minutes
        print(f"{r['run']:<16}{r['precision'] + ' (' + r['dtype'] + ')':<12}{r['seed']:>5}"
              f"{r['test_ignore_case_symbol']:>9.4f}{r['test_ned']:>7.3f}{r['val_ignore_case_symbol']:>9.4f}"
              f"{r['val_ned']:>7.3f}{r['seconds'] / 60:>9.2f}  {'ok' if ok else 'not met'}"
              f"{' ' + ','.join(r['warnings']) if r['warnings'] else ''}")
    for name in RUNS:
        for precision in PRECISIONS:
            rows = [r for r in records if r["run"] == name and r["precision"] == precision]
            if rows:
                print(f"{name} {precision}: mean test {statistics.mean(r['test_ignore_case_symbol'] for r in rows):.4f}"
                      f", val {statistics.mean(r['val_ignore_case_symbol'] for r in rows):.4f} over {len(rows)} "
                      f"seed(s), {max(r['seconds'] for r in rows) / 60:.2f} min at most")


def main() -> None:
    quality_benchmark(__doc__, RUNS, measure, table, "runs/benchmarks/text_quality.jsonl",
                      lambda r: (f"test {r['test_ignore_case_symbol']:.4f}, val {r['val_ignore_case_symbol']:.4f} "
                                 f"in {r['seconds'] / 60:.2f} min"))


if __name__ == "__main__":
    main()
