"""Does the default embedding run hold issue 26's targets on this machine, and does the triplet model beat the
classification baseline? `cvtool train task=embedding` (triplet loss, batch-hard mining on P×K batches) and the
softmax baseline (`task.loss=softmax data.sampler=null`: cross-entropy over the training identities, embedding =
the layer before the classifier) for several seeds, in fp32 and in the precision `hardware.amp=auto` picks here.
Targets: 10-fold verification accuracy >= 0.90 and Recall@1 >= 0.8 on the unseen test identities, within 5 minutes
(the whole command). Each run is a `cvtool train` subprocess; finished runs are kept in --results (JSON lines) and
not run again, so the benchmark can be run piecewise:

    python benchmarks/embedding_quality.py                        # triplet and softmax, seeds 0-2, fp32 and auto
    python benchmarks/embedding_quality.py --only triplet --seeds 0 --precisions auto
    python benchmarks/embedding_quality.py --table                # the table of what was measured
"""

from __future__ import annotations

import statistics

from recipe_robustness import PRECISIONS, Default, cvtool_run, quality_benchmark

from cvtool.engine.hardware import machine_summary

RUNS = {"triplet": Default(("task=embedding",), 0.90, 0.90, 5),
        "softmax": Default(("task=embedding", "task.loss=softmax", "data.sampler=null"), 0.0, 0.0, 5)}
RECALL_FLOOR = 0.8


def measure(name: str, precision: str, seed: int, resolved: str, recipe: str) -> dict:
    metrics, seconds = cvtool_run([*RUNS[name].overrides, PRECISIONS[precision], f"seed={seed}"])
    final = metrics["final"]
    return {"machine": machine_summary(), "run": name, "recipe": recipe, "precision": precision, "dtype": resolved,
            "seed": seed, "best_accuracy": metrics["best"], "best_epoch": metrics["best_epoch"],
            "accuracy": final["verification"]["accuracy"], "recall_at_1": final["retrieval"]["recall_at_1"],
            "map_at_r": final["retrieval"]["map_at_r"], "eer": final["verification"]["eer"], "seconds": seconds,
            "warnings": [w["kind"] for w in metrics.get("warnings", [])]}


def table(records: list[dict]) -> None:
    print(f"machine: {machine_summary()}")
    print(f"{'run':<9}{'precision':<11}{'seed':>5}{'accuracy':>10}{'R@1':>7}{'MAP@R':>7}{'EER':>7}{'minutes':>9}  "
          f"targets (acc >= 0.90, R@1 >= {RECALL_FLOOR}, <= 5 min)")
    for r in sorted(records, key=lambda r: (list(RUNS).index(r["run"]), r["precision"], r["seed"])):
        ok = r["accuracy"] >= 0.90 and r["recall_at_1"] >= RECALL_FLOOR and r["seconds"] <= 300
        print(f"{r['run']:<9}{r['precision'] + ' (' + r['dtype'] + ')':<11}{r['seed']:>5}{r['accuracy']:>10.4f}"
              f"{r['recall_at_1']:>7.3f}{r['map_at_r']:>7.3f}{r['eer']:>7.3f}{r['seconds'] / 60:>9.2f}  "
              f"{'ok' if ok else 'not met'}{' ' + ','.join(r['warnings']) if r['warnings'] else ''}")
    for precision in PRECISIONS:
        means = {name: [r for r in records if r["run"] == name and r["precision"] == precision] for name in RUNS}
        if all(means.values()):
            summary = {name: (statistics.mean(r["accuracy"] for r in rs), statistics.mean(r["recall_at_1"]
                              for r in rs)) for name, rs in means.items()}
            t, s = summary["triplet"], summary["softmax"]
            print(f"{precision}: triplet - softmax: accuracy {t[0] - s[0]:+.4f}, Recall@1 {t[1] - s[1]:+.3f} "
                  f"(means over {len(means['triplet'])} / {len(means['softmax'])} seeds)")


def main() -> None:
    quality_benchmark(__doc__, RUNS, measure, table, "runs/benchmarks/embedding_quality.jsonl",
                      lambda r: (f"accuracy {r['accuracy']:.4f}, Recall@1 {r['recall_at_1']:.3f} in "
                                 f"{r['seconds'] / 60:.2f} min"))


if __name__ == "__main__":
    main()
