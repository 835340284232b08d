"""Run by torchrun in test_ddp.py: the real `cvtool train` entry point, then each rank dumps its weights."""

import sys
from pathlib import Path

import torch

from cvtool.commands import train

out = Path(sys.argv[1])
seen = {}
build = train.build_trainer


def spy(cfg, run_dir):
    trainer, evaluation, classes = build(cfg, run_dir)
    seen["trainer"] = trainer
    return trainer, evaluation, classes


train.build_trainer = spy
train.main(sys.argv[2:])
rank = int(__import__("os").environ["RANK"])
torch.save(seen["trainer"].module.state_dict(), out / f"rank{rank}.pt")
