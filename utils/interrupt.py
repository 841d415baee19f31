"""Stopping a run on a signal, with its checkpoint saved.

The signals of ``run.stop_signals`` (SIGTERM, what SLURM and Kubernetes send before preemption; SIGINT, Ctrl-C;
SIGUSR1, SLURM's ``--signal``) ask the run to stop. Inside the training loop (:meth:`StopRequest.deferred`) the
request is only noted: the step in progress finishes, every rank learns of the request through
:class:`StopAgreement` (so all ranks stop after the same step), the engine saves ``checkpoint_latest.pth`` and ends
the run with :class:`RunInterrupted`, whose exit code is ``STOPPED_EXIT_CODE`` (75); ``--resume latest`` continues
exactly from there. Outside the loop (start-up, data preparation, an ``--evaluate`` run) there is nothing to save:
the request ends the run at once, with exit code 128 + the signal number, as a shell reports a signal.
Repeated signals are ignored (the first one is being served); a data-loader worker (a forked child) ignores them, as
its parent decides for it.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager

import torch
import torch.distributed as dist

from utils.errors import STOPPED_EXIT_CODE, UserError

logger = logging.getLogger(__name__)

DEFAULT_STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


class RunInterrupted(BaseException):
    """The run stopped on a signal. ``checkpoint``: where the training state was saved (None: nothing saved).

    A BaseException, like KeyboardInterrupt: no ``except Exception`` on the way up may swallow it."""

    def __init__(self, signal_name: str, step: int | None = None, checkpoint: str | None = None):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        super().__init__(self.message)

    @property
    def message(self) -> str:
        if self.checkpoint is None:
            return f"stopped by {self.signal_name} before the run had anything to save"
        return (f"stopped by {self.signal_name} after step {self.step}: saved {self.checkpoint}; continue with "
                f"--resume latest (the same command plus --resume latest)")

    @property
    def exit_code(self) -> int:
        if self.checkpoint is not None:
            return STOPPED_EXIT_CODE
        number = getattr(signal, self.signal_name, None)
        return 128 + int(number) if number is not None else 1


def signal_numbers(names) -> list[signal.Signals]:
    """``run.stop_signals`` names -> signals; an unknown name is a user error naming the key."""
    out = []
    for name in names or ():
        sig = getattr(signal, str(name).upper(), None)
        if not isinstance(sig, signal.Signals) or sig in (signal.SIGKILL, signal.SIGSTOP):
            raise UserError(f"run.stop_signals: {name!r} is not a signal a run can catch (e.g. SIGTERM, SIGINT, "
                            "SIGUSR1)")
        out.append(sig)
    return out


class StopRequest:
    """The process's stop request: the handlers of the stop signals and the signal received (None before one)."""

    def __init__(self):
        self.signal_name: str | None = None
        self._pid: int | None = None
        self._deferred = 0
        self._raised = False
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def install(self, names=DEFAULT_STOP_SIGNALS) -> None:
        """Handle ``names`` from now on (main thread only; elsewhere signal handlers cannot be set)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self.uninstall()
        self.signal_name, self._raised, self._pid = None, False, os.getpid()
        for sig in signal_numbers(names):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Give the signals back their previous handlers and forget the request (its RunInterrupted carries it on)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        self.signal_name = None

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            return  # a forked data-loader worker: the main process stops the run
        if self.signal_name is not None:
            return
        self.signal_name = signal.Signals(signum).name
        if self._deferred:
            logger.warning("received %s: the run stops after the current step, once its checkpoint is saved",
                           self.signal_name)
        elif not self._raised:
            self._raised = True
            raise RunInterrupted(self.signal_name)

    @contextmanager
    def deferred(self):
        """Inside: a stop signal is only noted (the training loop saves and stops at the next step boundary)."""
        self._deferred += 1
        try:
            yield self
        finally:
            self._deferred -= 1


STOP = StopRequest()


class StopAgreement:
    """All ranks decide together whether to stop: each poll shares this rank's request (the signal number, 0 for
    none) with the others and returns the largest one any rank had, as of the previous poll.

    The all-reduce is asynchronous on a gloo group of its own (CPU tensors: no GPU synchronisation), answered one
    poll later, so a step never waits for it; every rank polls at the same step boundaries, so every rank gets the
    same answer at the same step. :meth:`poll_now` waits for a fresh answer (at an epoch end)."""

    def __init__(self, request: StopRequest = STOP):
        self.request = request
        self.group = control_group()
        self._pending = None

    def _local(self) -> int:
        name = self.request.signal_name
        return int(getattr(signal, name)) if name else 0

    def _start(self):
        value = torch.tensor([self._local()], dtype=torch.int32)
        return dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group, async_op=True), value

    def _answer(self) -> int:
        if self._pending is None:
            return 0
        work, value = self._pending
        work.wait()
        self._pending = None
        return int(value.item())

    def poll(self) -> str | None:
        """The name of the signal some rank received (as of the previous poll), or None."""
        if self.group is None:
            return self.request.signal_name
        answer = self._answer()
        self._pending = self._start()
        return signal.Signals(answer).name if answer else None

    def poll_now(self) -> str | None:
        """Like :meth:`poll`, answered with every rank's request as of now."""
        if self.group is None:
            return self.request.signal_name
        earlier = self._answer()
        self._pending = self._start()
        answer = max(earlier, self._answer())
        return signal.Signals(answer).name if answer else None

    def close(self) -> None:
        """Collect the outstanding answer and destroy the group (every rank calls it at the same point): a group
        still referenced when the process exits can abort it from its worker threads."""
        if self.group is not None:
            try:
                self._answer()
            finally:
                dist.destroy_process_group(self.group)
                self.group = None


def control_group():
    """A new gloo group of every rank for the run's control messages (None without a process group); made by every
    rank at the same point (the start of Trainer.fit)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return dist.new_group(backend="gloo")
