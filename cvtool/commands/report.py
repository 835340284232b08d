"""Rich tables printed next to the metrics files: per-class rows and a summary, one layout per metrics kind."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def _table(title: str, *columns: str) -> Table:
    table = Table(title=escape(title))
    table.add_column(columns[0])
    for column in columns[1:]:
        table.add_column(column, justify="right")
    return table


def classification_table(metrics: dict, class_names: list[str], title: str) -> Table:
    table = _table(title, "class", "accuracy")
    for name, acc in zip(class_names, metrics["per_class_acc"]):
        table.add_row(escape(name), _fmt(acc))
    table.add_section()
    table.add_row("[bold]top-1", f"[bold]{_fmt(metrics['top1'])}")
    table.add_row("top-5", _fmt(metrics["top5"]))
    table.add_row("samples", str(metrics["num_samples"]))
    return table


def voc_table(metrics: dict, class_names: list[str], title: str) -> Table:
    table = _table(title, "class", "AP (VOC07 11-pt)", "AP (VOC10 area)")
    for name in metrics["voc07"]["per_class_AP"]:
        table.add_row(escape(name), _fmt(metrics["voc07"]["per_class_AP"][name]),
                      _fmt(metrics["voc10"]["per_class_AP"][name]))
    table.add_section()
    table.add_row("[bold]mAP", f"[bold]{_fmt(metrics['voc07']['mAP'])}", f"[bold]{_fmt(metrics['voc10']['mAP'])}")
    return table


def coco_table(metrics: dict, class_names: list[str], title: str) -> Table:
    iou_types = [t for t in ("bbox", "segm") if t in metrics]
    table = _table(title, "", *iou_types)
    categories = metrics[iou_types[0]]["per_category_AP"]
    for name in categories:
        table.add_row(escape(f"AP {name}"), *(_fmt(metrics[t]["per_category_AP"][name]) for t in iou_types))
    table.add_section()
    for stat in [k for k in metrics[iou_types[0]] if k != "per_category_AP"]:
        style = "[bold]" if stat == "AP" else ""
        table.add_row(f"{style}{stat}", *(f"{style}{_fmt(metrics[t][stat])}" for t in iou_types))
    return table


def keypoints_table(metrics: dict, class_names: list[str], title: str) -> Table:
    """OKS-AP per category, the 10 COCO keypoint numbers, then PCK per keypoint and its mean."""
    table = _table(title, "", "value")
    oks, pck = metrics["keypoints"], metrics["pck"]
    for name, ap in oks["per_category_AP"].items():
        table.add_row(escape(f"AP {name}"), _fmt(ap))
    table.add_section()
    for stat in [k for k in oks if k != "per_category_AP"]:
        style = "[bold]" if stat == "AP" else ""
        table.add_row(f"{style}OKS {stat}", f"{style}{_fmt(oks[stat])}")
    table.add_section()
    for name, value in pck["per_keypoint"].items():
        table.add_row(escape(f"PCK {name}"), _fmt(value))
    table.add_row(f"[bold]PCK@{pck['threshold']:g} mean", f"[bold]{_fmt(pck['mean'])}")
    return table


def embedding_table(metrics: dict, class_names: list[str], title: str) -> Table:
    """Verification (10-fold accuracy +- std, ROC AUC, EER, TAR@FAR) and retrieval (Recall@k, MAP@R)."""
    table = _table(title, "", "value")
    verification, retrieval = metrics["verification"], metrics["retrieval"]
    accuracy, std = verification["accuracy"], verification["accuracy_std"]
    table.add_row("[bold]verification accuracy", f"[bold]{_fmt(accuracy)}" + ("" if std is None else
                                                                              f" ± {std:.4f}"))
    for key, label in (("roc_auc", "ROC AUC"), ("eer", "EER"), ("tar_at_far_1e-3", "TAR @ FAR=1e-3"),
                       ("threshold", "distance threshold (mean over folds)")):
        table.add_row(label, _fmt(verification.get(key)))
    table.add_row("pairs", str(verification.get("num_pairs", "—")))
    table.add_section()
    for key, label in (("recall_at_1", "[bold]Recall@1"), ("recall_at_5", "Recall@5"), ("map_at_r", "MAP@R")):
        table.add_row(label, ("[bold]" if "bold" in label else "") + _fmt(retrieval[key]))
    table.add_row("queries", str(retrieval.get("num_queries", "—")))
    return table


def text_table(metrics: dict, class_names: list[str], title: str) -> Table:
    """Word accuracy in its three modes, character precision/recall and 1 - NED (MMOCR's definitions)."""
    table = _table(title, "", "value")
    words = metrics["word_acc"]
    table.add_row("word accuracy (exact)", _fmt(words["exact"]))
    table.add_row("word accuracy (ignore case)", _fmt(words["ignore_case"]))
    table.add_row("[bold]word accuracy (ignore case and symbols)", f"[bold]{_fmt(words['ignore_case_symbol'])}")
    table.add_section()
    for key, label in (("char_precision", "character precision"), ("char_recall", "character recall"),
                       ("one_minus_ned", "1 - normalised edit distance")):
        table.add_row(label, _fmt(metrics[key]))
    table.add_row("words", str(metrics["num_samples"]))
    return table


def proposals_table(metrics: dict, class_names: list[str], title: str) -> Table:
    """Proposal recall at IoU 0.5 and 0.7 and average recall per number of proposals per image."""
    table = _table(title, "proposals / image", "recall@0.5", "recall@0.7", "AR")
    for count in metrics["AR"]:
        table.add_row(count, *(_fmt(metrics[key][count]) for key in ("recall@0.5", "recall@0.7", "AR")))
    return table


def segmentation_table(metrics: dict, class_names: list[str], title: str) -> Table:
    table = _table(title, "class", "IoU", "accuracy")
    for name, iou, acc in zip(class_names, metrics["per_class_iou"], metrics["per_class_acc"]):
        table.add_row(escape(name), _fmt(iou), _fmt(acc))
    table.add_section()
    table.add_row("[bold]mIoU", f"[bold]{_fmt(metrics['mIoU'])}", "")
    table.add_row("fwIoU", _fmt(metrics["fwIoU"]), "")
    table.add_row("pixel accuracy", "", _fmt(metrics["pixel_acc"]))
    table.add_row("mean class accuracy", "", _fmt(metrics["mean_class_acc"]))
    return table


def tide_table(analysis: dict, title: str) -> Table:
    """The TIDE breakdown of a detection analysis: count and dAP per error type, base AP, best-F1 threshold."""
    tide = analysis["tide"]
    table = _table(title, "error", "count", "dAP")
    for name, error in tide["errors"].items():
        table.add_row(name, str(error["count"]), _fmt(error["dAP"]))
    table.add_section()
    for name, dap in tide["special"].items():
        table.add_row(name, "", _fmt(dap))
    table.add_row(f"[bold]AP @ IoU {analysis['settings']['tide_fg_iou']:g}", "", f"[bold]{_fmt(tide['ap'])}")
    best = analysis["pr_vs_score"]["overall"]["best"]
    if best:
        table.add_row(f"best F1 (score >= {best['threshold']:.4g})", "", _fmt(best["f1"]))
    return table


def metrics_table(metrics: dict, class_names: list[str], title: str) -> Table:
    """The table matching the metrics' kind (classification, VOC, COCO, keypoints, segmentation, embedding,
    text, proposals)."""
    if "voc07" in metrics:
        return voc_table(metrics, class_names, title)
    if "bbox" in metrics or "segm" in metrics:
        return coco_table(metrics, class_names, title)
    if "pck" in metrics:
        return keypoints_table(metrics, class_names, title)
    if "mIoU" in metrics:
        return segmentation_table(metrics, class_names, title)
    if "retrieval" in metrics:
        return embedding_table(metrics, class_names, title)
    if "word_acc" in metrics:
        return text_table(metrics, class_names, title)
    if "AR" in metrics:
        return proposals_table(metrics, class_names, title)
    return classification_table(metrics, class_names, title)


def show(table: Table, protocol: str | None = None) -> None:
    """The table, after a one-line protocol banner (never wrapped, so it can be grepped from a log)."""
    console = Console()
    if protocol:
        console.print(f"[bold]protocol:[/bold] {escape(protocol)}", soft_wrap=True)
    console.print(table)
