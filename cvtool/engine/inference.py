"""The one inference loop, shared by validation during training and `cvtool eval`."""

from __future__ import annotations

import contextlib

import torch

from cvtool.utils import distributed as dist

from .hardware import Hardware
from .progress import track


def autocast(hardware: Hardware):
    """Mixed-precision context for the configured AMP dtype (a no-op in full precision)."""
    if hardware.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=hardware.device.type, dtype=hardware.amp_dtype)


class OutputCollector:
    """An "evaluator" that keeps the model outputs on the CPU (`cvtool predict` over a loader): a batch tensor
    (classification logits, concatenated) or per-image dicts (detection, listed)."""

    def reset(self) -> None:
        self.outputs: list = []

    def process(self, inputs, outputs) -> None:
        if torch.is_tensor(outputs):
            self.outputs.append(outputs.detach().float().cpu())
        else:
            self.outputs.extend({k: v.detach().cpu() for k, v in o.items()} for o in outputs)

    def evaluate(self):
        return torch.cat(self.outputs) if self.outputs and torch.is_tensor(self.outputs[0]) else self.outputs


@torch.inference_mode()
def run_inference(model: torch.nn.Module, task, loader, evaluator, hardware: Hardware,
                  description: str = "eval") -> dict:
    """Run `model` over `loader`, feed the evaluator, return its (rank-reduced) metrics."""
    was_training = model.training
    model.eval()
    evaluator.reset()
    try:
        for batch in track(loader, total=len(loader), description=description, enabled=dist.is_main()):
            batch = task.preprocess(batch, hardware)
            with autocast(hardware) if task.amp_inference else contextlib.nullcontext():
                outputs = task.inference_step(model, batch)
            evaluator.process(batch, outputs)
    finally:
        model.train(was_training)
    return evaluator.evaluate()
