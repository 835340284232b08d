"""Run by torchrun in test_ddp.py: `cvtool train`, where rank 1 of the first attempt dies by SIGKILL after
optimizer step KILL_AT (argv[2]); torchrun restarts the group with the same command."""

import os
import signal
import sys

from cvtool.commands import train
from cvtool.engine import hooks

kill_at = int(sys.argv[1])
after_step = hooks.CheckpointHook.after_step


def dying_after_step(self, trainer, outputs):
    after_step(self, trainer, outputs)
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if first_attempt and os.environ["RANK"] == "1" and trainer.step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


hooks.CheckpointHook.after_step = dying_after_step
train.main(sys.argv[2:])
