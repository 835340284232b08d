"""Classification accuracy: top-1, top-k and per-class accuracy from per-class hit counts."""

from __future__ import annotations

import torch

from cvtool.utils import distributed as dist


class ClassificationEvaluator:
    """`process(inputs, logits)` with inputs["target"]; top-k is capped at the number of classes."""

    def __init__(self, num_classes: int, topk: int = 5):
        self.num_classes, self.k = num_classes, min(topk, num_classes)
        self.reset()

    def reset(self) -> None:
        # rows: samples, top-1 hits, top-k hits (per true class)
        self.counts = torch.zeros(3, self.num_classes, dtype=torch.int64)

    def process(self, inputs: dict, outputs: torch.Tensor) -> None:
        target = inputs["target"].detach().to("cpu", torch.int64)
        top = outputs.detach().float().topk(self.k, dim=1).indices.cpu()
        hit1 = top[:, 0] == target
        hitk = (top == target[:, None]).any(dim=1)
        n = self.num_classes
        self.counts[0] += torch.bincount(target, minlength=n)
        self.counts[1] += torch.bincount(target[hit1], minlength=n)
        self.counts[2] += torch.bincount(target[hitk], minlength=n)

    def evaluate(self) -> dict:
        counts = dist.all_reduce_sum(self.counts.clone())
        total = int(counts[0].sum())
        per_class = [float(hits) / float(seen) if seen else None for seen, hits in zip(counts[0].tolist(),
                                                                                       counts[1].tolist())]
        return {"top1": float(counts[1].sum()) / total if total else None,
                "top5": float(counts[2].sum()) / total if total else None,
                "num_samples": total, "per_class_acc": per_class}
