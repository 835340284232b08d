"""`cvtool models [PATTERN]`: the registry as a table (parameters counted on the meta device: no memory)."""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from cvtool.errors import CvtoolError
from cvtool.models import count_parameters, create_model, list_models, model_info

CLASSES = {"classification": 1000, "detection": 80, "segmentation": 21, "keypoints": 1, "embedding": 1000,
           "text": 37}
# ImageNet, COCO, VOC, person; embedding: a softmax baseline over 1000 identities (its classifier is off by default);
# text: 36 characters + the CTC blank (word_classifier: a 37-word lexicon)


def parameter_count(name: str) -> int:
    with torch.device("meta"):
        return count_parameters(create_model(name, num_classes=CLASSES[model_info(name).task]))


def main(pattern: str = "*", task: str | None = None) -> list[str]:
    names = list_models(pattern, task=task)
    if not names:
        raise CvtoolError(f"no model matches '{pattern}'" + (f" for task {task}" if task else ""),
                          where="cvtool models", fix="run `cvtool models` to see all names")
    table = Table(title="cvtool models (parameters for ImageNet's 1000 / COCO's 80 / VOC's 21 classes; "
                        "builder defaults)")
    for column, justify in (("name", "left"), ("task", "left"), ("params", "right"), ("min input", "right"),
                            ("description", "left")):
        table.add_column(column, justify=justify)
    for name in names:
        info = model_info(name)
        table.add_row(name, info.task, f"{parameter_count(name) / 1e6:.2f}M", f"{info.min_size} px",
                      info.description)
    Console().print(table)
    return names
