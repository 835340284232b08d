"""The one training loop for every task: the task adapter's training_step returns {"loss": ..., ...}.

AMP, gradient accumulation/clipping, channels_last and DDP are handled here; everything else (LR schedule,
EMA, validation, checkpoints, logging, early stop) lives in small hooks.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import subprocess
from pathlib import Path

import torch

from cvtool.errors import CvtoolError, ExitRequest
from cvtool.utils import distributed as dist
from cvtool.utils.seeding import rng_state, set_rng_state

from .hardware import Hardware
from .hooks import Hook
from .inference import autocast
from .metrics_log import MetricsLogger

log = logging.getLogger("cvtool.train")

FINITE_CHECK_EVERY = 50  # optimizer steps between checks that the loss stayed finite (a device sync), and each
                         # epoch's end, before validation and checkpoints see the weights


class Trainer:
    def __init__(self, model: torch.nn.Module, task, optimizer: torch.optim.Optimizer, scheduler, train_loader,
                 *, hardware: Hardware, epochs: int, grad_accum: int, clip_grad_norm: float | None,
                 stop_after: int | None, logger: MetricsLogger, checkpoint_meta: dict,
                 preempt_signals: tuple[str, ...] = (), requeue: bool = False, allow_world_size_change: bool = False):
        self.module = model  # the unwrapped model (what gets saved)
        self.model = model   # what is called: DDP and/or torch.compile wrapped
        if hardware.distributed:
            if hardware.sync_bn:
                model = self.module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            device_ids = [hardware.device.index] if hardware.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        if hardware.compile:
            self.model = torch.compile(self.model)
        self.eval_model = model
        self.task, self.optimizer, self.scheduler, self.loader = task, optimizer, scheduler, train_loader
        self.hardware, self.epochs, self.grad_accum = hardware, epochs, grad_accum
        self.clip_grad_norm, self.stop_after, self.logger = clip_grad_norm, stop_after, logger
        self.checkpoint_meta = checkpoint_meta
        self.scaler = torch.amp.GradScaler(hardware.device.type, enabled=hardware.use_grad_scaler)
        self.hooks: dict[str, Hook] = {}
        self.epoch = self.step = self.batch_in_epoch = 0
        self.steps_per_epoch_batches = len(train_loader)
        self.steps_per_epoch = max(1, math.ceil(self.steps_per_epoch_batches / grad_accum))  # last step may be partial
        self.should_stop = self.improved = self.stopping_early = False
        self.val_metrics_this_epoch: dict | None = None
        self.last_batch_size, self.lr = 0, 0.0
        self._signal: int | None = None
        self.preempt_signals = tuple(parse_signal(name) for name in preempt_signals)
        self.requeue, self.allow_world_size_change = requeue, allow_world_size_change
        self._previous_handlers: dict = {}
        self.resume_offset: int | None = None  # samples of the epoch consumed (over all ranks) before a resume
        self.built_lrs = list(scheduler.base_lrs)  # the lr of this run's effective batch, before any resume
        self._loss_finite = torch.ones((), dtype=torch.bool, device=hardware.device)
        self._finite_since = 0

    def register_hooks(self, **hooks: Hook) -> None:
        """Hooks run in registration order (evaluation must come before checkpointing)."""
        self.hooks.update(hooks)

    def _call(self, event: str, *args) -> None:
        for hook in self.hooks.values():
            getattr(hook, event)(self, *args)

    # --- state ---------------------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        return {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "hooks": {name: hook.state_dict() for name, hook in self.hooks.items()},
                "epoch": self.epoch, "step": self.step, "batch_in_epoch": self.batch_in_epoch,
                "epoch_offset": self.epoch_offset(), "world_size": dist.world_size(),
                "rng": rng_state(), "tracking": self.logger.state_dict(), **self.checkpoint_meta}

    def epoch_offset(self) -> int:
        """Samples of this epoch consumed so far, over all ranks (the sampler's global position)."""
        return self.batch_in_epoch * self.loader.batch_size * dist.world_size()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for name, hook_state in state["hooks"].items():
            if name in self.hooks:
                self.hooks[name].load_state_dict(hook_state)
        self.epoch, self.step, self.batch_in_epoch = state["epoch"], state["step"], state["batch_in_epoch"]
        self._finite_since = self.step
        saved_world = state.get("world_size", 1)
        same_ranks = saved_world == dist.world_size() and len(state.get("rng_ranks", [])) == saved_world
        set_rng_state(state["rng_ranks"][dist.rank()] if same_ranks else state["rng"])
        if saved_world != dist.world_size():
            self._change_world_size(saved_world, state.get("epoch_offset", 0), state.get("path"))

    def _change_world_size(self, saved: int, offset: int, where: str | None) -> None:
        """Resume a run of `saved` processes on this many: the epoch continues with its unseen samples, and the
        schedule at the same fraction of training, with the lr of this run's effective batch."""
        now = dist.world_size()
        if not self.allow_world_size_change:
            raise CvtoolError(f"the checkpoint was trained on {saved} process(es), this run has {now}", where=where,
                              fix=f"resume on {saved} process(es), or allow it with "
                                  "trainer.allow_world_size_change=true (the lr then follows "
                                  "trainer.lr_reference_batch, see docs/cluster.md)")
        self.resume_offset = offset
        self.batch_in_epoch = offset // (self.loader.batch_size * now)
        position = self.epoch * self.steps_per_epoch + math.ceil(self.batch_in_epoch / self.grad_accum)
        self.scheduler.base_lrs = list(self.built_lrs)
        self.scheduler.last_epoch = position
        for group, base, factor in zip(self.optimizer.param_groups, self.built_lrs, self.scheduler.lr_lambdas,
                                       strict=True):
            group["initial_lr"], group["lr"] = base, base * factor(position)
        if dist.is_main():
            log.warning("resuming a %d-process run on %d: epoch %d continues after its first %d samples, the "
                        "schedule at step %d of %d with lr %.3g", saved, now, self.epoch + 1, offset, position,
                        self.epochs * self.steps_per_epoch, self.built_lrs[0])

    # --- loop ----------------------------------------------------------------------------------------------
    def fit(self) -> None:
        previous = self._install_signal_handlers()
        try:
            self._call("before_train")
            while self.epoch < self.epochs and not self.should_stop:
                self._train_epoch()
                self._check_finite()
                self._sync_buffers()
                self.epoch += 1
                self.batch_in_epoch = 0
                self.stopping_early = self.stop_after is not None and self.epoch >= self.stop_after
                self._call("after_epoch")
                self.val_metrics_this_epoch = None
                if self.stopping_early and self.epoch < self.epochs:
                    self._call("after_train")
                    raise ExitRequest(self._resume_message(f"stopped after epoch {self.epoch} "
                                                           f"(trainer.stop_after={self.stop_after})"), 0)
            self._call("after_train")
        finally:
            self._restore_signal_handlers(previous)

    def _train_epoch(self) -> None:
        sampler = self.loader.sampler
        offset = self.epoch_offset() if self.resume_offset is None else self.resume_offset
        sampler.set_epoch(self.epoch, skip=offset)
        self.resume_offset = None
        self._call("before_epoch")
        self.model.train()
        for batch in self.loader:
            self.batch_in_epoch += 1
            boundary = self.batch_in_epoch % self.grad_accum == 0 or self.batch_in_epoch == self.steps_per_epoch_batches
            outputs = self._forward_backward(batch, sync=boundary)
            if boundary:
                self._optimizer_step()
                self.step += 1
                self._call("after_step", outputs)
                if self.step % FINITE_CHECK_EVERY == 0:
                    self._check_finite()
                self._check_signal()

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's BatchNorm statistics (DDP syncs them only at the start of a forward)."""
        if self.hardware.distributed:
            for buffer in self.module.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def _forward_backward(self, batch, sync: bool) -> dict:
        batch = self.task.preprocess(batch, self.hardware)
        self.last_batch_size = self.task.batch_size(batch)
        no_sync = self.model.no_sync if (not sync and hasattr(self.model, "no_sync")) else contextlib.nullcontext
        with no_sync():
            with autocast(self.hardware):
                outputs = self.task.training_step(self.model, batch)
            self.scaler.scale(outputs["loss"] / self.grad_accum).backward()
        self._loss_finite &= torch.isfinite(outputs["loss"].detach())
        return outputs

    def _check_finite(self) -> None:
        """Stop with one clear line once the loss has been NaN or infinite (the weights are then lost causes):
        before anything evaluates or saves them, so last.pt/best.pt keep the last good epoch."""
        flag = (~self._loss_finite).float()
        if self.hardware.distributed:
            flag = dist.all_reduce_sum(flag)
        if flag.item() == 0:
            self._finite_since = self.step
            return
        self._call("after_train")
        last = self._last_checkpoint()
        kept = f"; {last} keeps the last good epoch" if last and self.epoch else ""
        raise CvtoolError(f"the training loss became NaN or infinite between steps {self._finite_since} and "
                          f"{self.step} (epoch {self.epoch + 1}){kept}", where="optim.lr",
                          fix="lower optim.lr, set trainer.clip_grad_norm, or train in full precision "
                              "(hardware.amp=off)")

    def _optimizer_step(self) -> None:
        self.lr = self.optimizer.param_groups[0]["lr"]  # the lr this step used (hooks may change it after)
        if self.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    # --- interruption --------------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict:
        previous = {}
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for signum in dict.fromkeys((signal.SIGINT, signal.SIGTERM, *self.preempt_signals)):
                previous[signum] = signal.signal(signum, self._on_signal)
        self._previous_handlers = previous
        return previous

    def _restore_signal_handlers(self, previous: dict) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum, frame) -> None:
        if self._signal is not None:  # second signal: stop right now
            raise KeyboardInterrupt
        self._signal = signum
        if dist.is_main():
            log.warning("%s received: saving a checkpoint after this step (press Ctrl-C again to abort)",
                        signal.Signals(signum).name)

    def _check_signal(self) -> None:
        flag = torch.tensor([1.0 if self._signal is not None else 0.0])
        if self.hardware.distributed:  # every rank must stop at the same step
            flag = dist.all_reduce_sum(flag.to(self.hardware.device)).cpu()
        if flag.item() == 0:
            return
        self._check_finite()  # never save weights a NaN loss has ruined
        self._call("on_interrupt")
        received = [s for s in dist.all_gather_objects(self._signal) if s is not None]  # the one some rank got
        signum = signal.Signals(received[0]) if received else signal.SIGTERM
        requeued = ""
        if signum in self.preempt_signals and dist.is_main():
            requeued = self._hand_on_preemption(signum)
        raise ExitRequest(requeued + self._resume_message(f"interrupted by {signal.Signals(signum).name} at epoch "
                                               f"{self.epoch + 1}, step {self.step}"), 128 + signum)

    def _hand_on_preemption(self, signum: int) -> str:
        """After saving: submitit's own handler when it installed one (it requeues), else `scontrol requeue` of
        this SLURM job (when `requeue` and SLURM_JOB_ID is set). Returns what was done, for the exit message."""
        previous = self._previous_handlers.get(signum)
        if callable(previous) and getattr(previous, "__module__", "").startswith("submitit"):
            previous(signum, None)
            return "submitit requeued the job; "
        job = dist.slurm_job_id()
        if not self.requeue or job is None:
            return ""
        requeue_slurm_job(job)
        return f"SLURM job {job} requeued; "

    def _last_checkpoint(self) -> Path | None:
        """Where the checkpoint hook writes last.pt (None without one)."""
        directory = self.hooks["checkpoint"].directory if "checkpoint" in self.hooks else None
        return Path(directory) / "last.pt" if directory else None

    def _resume_message(self, what: str) -> str:
        where = self._last_checkpoint() or "checkpoints/last.pt"
        return f"{what}; saved {where}\nresume with: cvtool train resume={where}"


def parse_signal(name: str | int) -> int:
    """A signal by name (SIGUSR1, USR1) or number."""
    if isinstance(name, int):
        return signal.Signals(name)
    key = name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"
    if key not in signal.Signals.__members__:
        raise CvtoolError(f"unknown signal {name!r}", where="trainer.preempt_signals",
                          fix="use signal names such as SIGUSR1, SIGUSR2, SIGTERM")
    return signal.Signals[key]


def requeue_slurm_job(job: str) -> None:
    """`scontrol requeue <job>`; a missing or failing scontrol is one clear error (the checkpoint is saved)."""
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise CvtoolError(f"saved the checkpoint, but could not requeue SLURM job {job}: {err}", where="scontrol",
                          fix="resubmit the same command (resume=auto continues the run)") from err
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise CvtoolError(f"saved the checkpoint, but `scontrol requeue {job}` failed: {reason[0]}",
                          where="scontrol", fix="resubmit the same command (resume=auto continues the run)")
    log.warning("requeued SLURM job %s", job)
