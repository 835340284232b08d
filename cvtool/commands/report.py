"""Rich tables printed next to the metrics files."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def classification_table(metrics: dict, class_names: list[str], title: str) -> Table:
    table = Table(title=escape(title))
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    for name, acc in zip(class_names, metrics["per_class_acc"]):
        table.add_row(name, _fmt(acc))
    table.add_section()
    table.add_row("[bold]top-1", f"[bold]{_fmt(metrics['top1'])}")
    table.add_row("top-5", _fmt(metrics["top5"]))
    table.add_row("samples", str(metrics["num_samples"]))
    return table


def show(table: Table) -> None:
    Console().print(table)
