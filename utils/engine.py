"""The one training loop every task uses: AMP, accumulation with DDP no_sync, clipping, evaluation, checkpoints.

A task gives the :class:`Trainer` a model, a function that returns the training batches of an epoch, an optional
evaluation function (called at the epochs ``utils.schedule.EvaluationSchedule`` makes due; every result is kept in
an ``EvaluationHistory`` that checkpoints carry) and, when its step is unusual (pre-training alternates two kinds of
batches), a ``train_step``.
A ``train_step(ctx, batch)`` runs forwards inside ``ctx.micro_step()`` and hands the losses to ``ctx.backward``; the
context does the scaling, accumulation, clipping and optimiser step. The scheduler advances once per loop iteration
in which at least one optimiser step happened (the original stepped it once per pre-training iteration of two updates).
A stop signal (``utils.interrupt``) is served at the next step boundary: every rank stops after the same step, the
checkpoint is saved and the run ends with ``RunInterrupted``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from utils import checkpoint as ckpt
from utils import remote
from utils.dist import DistEnv, all_gather_object, broadcast_object
from utils.errors import ReportedElsewhere, UserError
from utils.interrupt import STOP, RunInterrupted, StopAgreement
from utils.logging import RunningMeans, append_jsonl, truncate_jsonl_after_step
from utils.optim import build_optimizer, build_scheduler, unwrap_model
from utils.precision import autocast_context, build_grad_scaler, resolve_precision
from utils.schedule import EvaluationHistory, EvaluationSchedule

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside nested dicts/lists/tuples to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def total_loss(losses: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Sum named losses (weight 1 each, as the original does)."""
    if isinstance(losses, torch.Tensor):
        return losses
    if not losses:
        raise ValueError("train_step produced no losses")
    return sum(losses.values())


def enable_grad_checkpointing(model: nn.Module) -> None:
    """Switch on activation checkpointing (``run.grad_checkpointing``) through the model's
    ``set_grad_checkpointing``; a model without one is an error, not a silent no-op."""
    setter = getattr(model, "set_grad_checkpointing", None)
    if setter is None:
        raise ValueError(f"run.grad_checkpointing is on but {type(model).__name__} has no set_grad_checkpointing()")
    setter(True)
    logger.info("activation checkpointing on (%s)", type(model).__name__)


class StepContext:
    """What a ``train_step`` uses: the (wrapped) model, autocast + no_sync, and backward-with-update."""

    def __init__(self, trainer: "Trainer"):
        self._t = trainer

    @property
    def model(self) -> nn.Module:
        return self._t.model

    @property
    def raw_model(self) -> nn.Module:
        return self._t.raw_model

    @property
    def device(self) -> torch.device:
        return self._t.env.device

    def micro_step(self):
        """Autocast, and skip DDP's gradient all-reduce unless the next backward completes an update."""
        stack = contextlib.ExitStack()
        t = self._t
        ddp = getattr(t.model, "_orig_mod", t.model)  # under run.compile the DDP wrapper is inside
        if t.accum > 1 and (t.micro + 1) % t.accum != 0 and hasattr(ddp, "no_sync"):
            stack.enter_context(ddp.no_sync())
        stack.enter_context(autocast_context(t.precision, t.env.device))
        return stack

    def backward(self, losses: torch.Tensor | Mapping[str, torch.Tensor]) -> bool:
        """Backward of the summed losses; steps the optimiser when an accumulation window completes.

        Returns True when an optimiser step happened.
        """
        return self._t.backward(losses)


def default_train_step(ctx: StepContext, batch: Any) -> None:
    """One forward (keyword batch -> dict of losses) and one backward."""
    with ctx.micro_step():
        losses = ctx.model(**batch) if isinstance(batch, Mapping) else ctx.model(*batch)
    ctx.backward(losses)


@dataclass
class TrainState:
    epoch: int = 0                 # the epoch in progress (or the next one at an epoch boundary)
    step: int = 0                  # scheduler steps taken
    batches_in_epoch: int = 0      # batches of `epoch` already consumed


class Trainer:
    """Owns the optimiser, scheduler, scaler, DDP wrapper, checkpoints and the loop."""

    def __init__(self, config: Mapping, env: DistEnv, model: nn.Module, *, output_dir: str | os.PathLike,
                 steps_per_epoch: int, train_batches: Callable[[int, int], Iterable] | None = None,
                 evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
                 primary_metric: str | None = None, init_params: Iterable[str] = (),
                 train_step: Callable[[StepContext, Any], None] = default_train_step,
                 epochs: int | None = None, extra_state: Callable[[], Mapping] | None = None,
                 schedule: EvaluationSchedule | None = None):
        self.config, self.env = config, env
        self.output_dir = Path(output_dir)
        run = config.get("run", {})
        accel = config.get("accelerator") or {}
        self.accum = max(1, int(accel.get("GRAD_ACCUMULATE_STEPS", 1) or 1))
        self.clip = float(accel.get("CLIP_GRAD_NORM", 0) or 0)
        self.precision = resolve_precision(config, env.device)
        self.scaler = build_grad_scaler(self.precision, config, env.device)
        self.train_batches, self.evaluate_fn, self.primary_metric = train_batches, evaluate, primary_metric
        # primary_metric: the metric the best evaluation maximises (utils.schedule.LAST: the latest is the best)
        self.schedule = schedule or EvaluationSchedule.from_config(config)
        self.history = EvaluationHistory(primary_metric)
        self.train_step = train_step
        # Task state saved with every checkpoint (e.g. the pre-training streams' positions); after resume() the
        # saved value is in self.resumed_extra.
        self.extra_state = extra_state
        self.resumed_extra: dict = {}
        self.epochs = int(epochs if epochs is not None else config["schedular"]["epochs"])
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.max_steps = run.get("max_steps")
        self.total_steps = self.epochs * self.steps_per_epoch
        self.log_every = int(run.get("log_every", 50) or 50)
        self.ckpt_every = int(run.get("ckpt_every_steps", 0) or 0)
        # The original's model snapshots (pre-training configs): model_state_epoch_E.th every ckpt_frequent epochs,
        # model_state_step_S.th every ckpt_frequent_step steps, as {'model', 'config'}.
        self.snapshot_epochs = int(config.get("ckpt_frequent", 0) or 0)
        self.snapshot_steps = int(config.get("ckpt_frequent_step", 0) or 0)
        self.progress = bool(run.get("progress", True)) and env.is_main
        # --output_hdfs: checkpoints, logs and results mirrored to remote storage (utils.remote), None without it
        self.remote = remote.output_mirror(config.get("output_hdfs"), self.output_dir)

        self.raw_model = model.to(env.device)
        self.optimizer = build_optimizer(self.raw_model, config["optimizer"], init_params)
        self.scheduler = build_scheduler(self.optimizer, config["schedular"], self.total_steps)
        self.model = self._wrap(self.raw_model, run)
        self.state = TrainState()
        self.micro = 0
        self.meters = RunningMeans()
        self.evaluating_epoch: int | None = None
        self.last_train_means: dict = {}
        self._saved_step: int | None = None   # the step of the last checkpoint this run wrote
        self._ctx = StepContext(self)
        logger.info("precision %s, accumulation %d, clip %s, %d steps (%d per epoch x %d epochs%s)",
                    self.precision, self.accum, self.clip or "off", self.total_steps, self.steps_per_epoch,
                    self.epochs, f", stopping at run.max_steps={self.max_steps}" if self.max_steps else "")

    def _wrap(self, model: nn.Module, run: Mapping) -> nn.Module:
        if run.get("grad_checkpointing"):
            enable_grad_checkpointing(model)
        wrapped = model
        if self.env.world_size > 1:
            ids = [self.env.device.index] if self.env.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(
                wrapped, device_ids=ids, find_unused_parameters=bool(run.get("find_unused_parameters", False)))
        if run.get("compile"):
            # compile(DDP(model)): dynamo splits the graph at DDP's buckets, so gradient all-reduces overlap the
            # backward (DDP(compile(model)) would all-reduce only after the whole compiled backward)
            wrapped = torch.compile(wrapped)
        return wrapped

    # ---------------------------------------------------------------- updates
    def backward(self, losses) -> bool:
        loss = total_loss(losses)
        # (fp16: the scaler skips non-finite steps itself; testing it first spares a host read of the loss.)
        if self.scaler is None and not torch.isfinite(loss.detach()).all():
            named = {k: float(v.detach()) for k, v in losses.items()} if isinstance(losses, Mapping) else {}
            raise FloatingPointError(f"non-finite loss at step {self.state.step} (epoch {self.state.epoch}): "
                                     f"{named or float(loss.detach())}")
        scaled = loss / self.accum
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        self.micro += 1
        if isinstance(losses, Mapping):
            self.meters.update({k: v.detach() for k, v in losses.items()})
        self.meters.update({"loss": loss.detach()})
        if self.micro % self.accum != 0:
            return False
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.clip).detach()
            if self.scaler is not None:
                # fp16: the scaler skips the steps whose gradients overflowed; their inf norm would make the whole
                # window's mean inf, so it is averaged over the applied steps and the skipped fraction logged.
                finite = torch.isfinite(norm)
                self.meters.update({"grad_norm": torch.where(finite, norm, 0.0)}, n=finite)
                self.meters.update({"fp16_skipped": (~finite).double()})
            else:
                self.meters.update({"grad_norm": norm})
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._updated = True
        return True

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_state(self, extra: Mapping | None = None, rng_per_rank: list | None = None) -> dict:
        return ckpt.training_state(self.raw_model, self.optimizer, self.scheduler, self.scaler,
                                   epoch=self.state.epoch, step=self.state.step,
                                   batches_in_epoch=self.state.batches_in_epoch, config=self.config,
                                   best=self.history.best_pointer(), evaluations=self.history.state_dict(),
                                   extra=extra, rng_per_rank=rng_per_rank, run_shape=self.run_shape())

    def run_shape(self) -> dict:
        """What a resume must match for the data position and the LR schedule to carry over."""
        return {"world_size": self.env.world_size, "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps}

    def save(self, is_best: bool = False, step_file: bool = False) -> None:
        # extra_state and the RNG states gather from every rank, so every rank calls save; rank 0 writes.
        extra = self.extra_state() if self.extra_state is not None else None
        rng_per_rank = all_gather_object(ckpt.rng_state())

        def write():
            path = ckpt.save_training_state(self.output_dir, self.checkpoint_state(extra, rng_per_rank),
                                            is_best=is_best, step_file=step_file)
            logger.info("saved %s%s (epoch %d, step %d)", path, " + best" if is_best else "", self.state.epoch,
                        self.state.step)

        self._write_on_main(write)
        self._saved_step = self.state.step

    def save_model_snapshot(self, name: str) -> None:
        """Write ``{'model', 'config'}`` to ``output_dir/name`` (rank 0): the original's model-only snapshot files,
        which ``--checkpoint`` loads like a released checkpoint."""
        def write():
            path = ckpt.atomic_torch_save({"model": self.raw_model.state_dict(), "config": dict(self.config)},
                                          self.output_dir / name)
            logger.info("saved %s", path)

        self._write_on_main(write)

    def _write_on_main(self, write: Callable[[], None]) -> None:
        """Rank 0 writes (and mirrors); every rank waits for it and, when the write failed for a reason the user
        fixes (a full disk), ends with it: rank 0 reports it, the others exit quietly with the same code."""
        error = None
        if self.env.is_main:
            try:
                write()
                if self.remote is not None:
                    self.remote.sync(step=self.state.step)
            except UserError as e:
                error = e
        failure = broadcast_object(None if error is None else str(error))
        if error is not None:
            raise error
        if failure is not None:
            raise ReportedElsewhere(failure)

    def resume(self, resume: str | os.PathLike) -> None:
        """Restore everything a training checkpoint holds, including the data position and RNG states."""
        if self.remote is not None and str(resume) == "latest":  # the local folder may be gone: the remote copy
            self.remote.fetch_latest_if_absent(self.output_dir / ckpt.LATEST, self.env.is_main)
        path = ckpt.find_resume_file(resume, self.output_dir)
        state = ckpt.load_training_state(path)
        try:
            self.raw_model.load_state_dict(state["model"], strict=True)
        except RuntimeError as e:
            raise ckpt.CheckpointError(
                f"--resume {path}: its weights do not fit this {type(self.raw_model).__name__} (a checkpoint of "
                f"another task or model size?): {_first_problem(e)}; resume a run of this task and config") from None
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.state = TrainState(epoch=state["epoch"], step=state["step"],
                                batches_in_epoch=state.get("batches_in_epoch", 0))
        self.history.load_state_dict(state.get("evaluations") or {})
        if state.get("best") and "evaluations" not in state:
            logger.warning("%s predates evaluation histories in checkpoints: its earlier evaluations (best so far: "
                           "%s) are not known to this run, which chooses its best among the evaluations from now on",
                           path, state["best"])
        self.resumed_extra = dict(state.get("extra") or {})
        saved_shape, shape = state.get("run_shape"), self.run_shape()
        if saved_shape and saved_shape != shape:
            logger.warning("%s was saved by a run of %s; this run is %s: the position in the data (batches into the "
                           "epoch) and the learning-rate schedule do not carry over exactly (changed --bs, epochs, "
                           "data size or number of processes?)", path, saved_shape, shape)
        rng = ckpt.rng_state_for_rank(state, self.env.rank, self.env.world_size)
        if rng is not None:
            ckpt.set_rng_state(rng)
        else:  # each rank keeps its own seed (seed + rank): a valid run, not the uninterrupted one's draws
            logger.warning("%s holds no RNG state for rank %d of %d processes (saved by a run of another size): "
                           "random draws after the resume will differ from an uninterrupted run", path,
                           self.env.rank, self.env.world_size)
        logger.info("resumed from %s: epoch %d, step %d, %d batches into the epoch", path, self.state.epoch,
                    self.state.step, self.state.batches_in_epoch)
        if self.env.is_main:
            self._reconcile_outputs(state)
        if self.state.epoch >= self.epochs or self._done():
            logger.warning("%s is the end of a finished run (epoch %d of %d, step %d): there is nothing left to "
                           "train; give more epochs (--epoch) to continue it", path, self.state.epoch, self.epochs,
                           self.state.step)

    def _reconcile_outputs(self, state: Mapping) -> None:
        """After a resume (rank 0): the best file agrees with the resumed history; metrics.jsonl keeps each step
        once (the rows the interrupted run wrote after its checkpoint go)."""
        best = self.output_dir / ckpt.BEST
        if self.remote is not None and not best.is_file() and self.remote.complete_marker(ckpt.BEST) is not None:
            remote.download_atomic(self.remote.fs, self.remote.remote_path(ckpt.BEST), best)
        note = ckpt.reconcile_best(self.output_dir, state, self.history.best_step())
        if note:
            logger.warning("%s", note)
        dropped = truncate_jsonl_after_step(self.output_dir / "metrics.jsonl", self.state.step)
        if dropped:
            logger.info("metrics.jsonl: dropped %d row(s) the interrupted run wrote after step %d", dropped,
                        self.state.step)

    # ---------------------------------------------------------------- evaluation
    def run_evaluation(self) -> dict:
        """Evaluate with the task's function (eval mode, autocast, no grad) and update the best metric."""
        if self.evaluate_fn is None:
            return {}
        self.raw_model.eval()
        with torch.no_grad(), autocast_context(self.precision, self.env.device):
            metrics = dict(self.evaluate_fn(self.raw_model))
        self.raw_model.train()
        return metrics

    # ---------------------------------------------------------------- loop
    def _log_step(self, epoch: int) -> None:
        means = self.meters.means()
        self.last_train_means = dict(means)
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        record = {"step": self.state.step, "epoch": epoch, "lr": lrs[0], "lr_max": max(lrs), **means,
                  "seconds": self.meters.elapsed()}
        if self.env.is_main:
            append_jsonl(self.output_dir / "metrics.jsonl", record)
            logger.info("epoch %d step %d lr %.3g | %s", epoch, self.state.step, lrs[0],
                        " ".join(f"{k} {v:.4f}" for k, v in means.items()))
        self.meters.reset()

    def _done(self) -> bool:
        return bool(self.max_steps) and self.state.step >= int(self.max_steps)

    def fit(self) -> dict:
        """Train until the epochs (or run.max_steps) are done; returns the last evaluation's metrics."""
        if self.train_batches is None:
            raise ValueError("Trainer.fit needs train_batches")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.raw_model.train()
        agreement = StopAgreement()
        with STOP.deferred():
            try:
                self._fit_epochs(agreement)
            finally:
                agreement.close()
        if self.evaluate_fn is not None and self.state.step not in self.history.records:
            # the end of the run was not evaluated (a resumed finished run): evaluate it, as every run's last step is
            epoch = self.state.epoch - 1 if self.state.batches_in_epoch == 0 else self.state.epoch
            self.save(is_best=self._evaluate_and_record(epoch))
        last = self.history.last()
        return dict(last["metrics"]) if last else {}

    def _stop(self, signal_name: str, epoch: int) -> None:
        """Serve a stop request at a step boundary: log the steps since the last record, save, end the run."""
        if self.meters.counts:
            self._log_step(epoch)
        if self._saved_step != self.state.step:
            self.save()
        raise RunInterrupted(signal_name, self.state.step, str(self.output_dir / ckpt.LATEST))

    def _fit_epochs(self, agreement: StopAgreement) -> None:
        while self.state.epoch < self.epochs and not self._done():
            epoch, skip = self.state.epoch, self.state.batches_in_epoch
            batches = self.train_batches(epoch, skip)
            bar = _progress(batches, _safe_len(batches), f"epoch {epoch}", self.progress)
            stopped = False
            for i, batch in enumerate(bar, start=skip):
                self._updated = False
                self.train_step(self._ctx, move_to_device(batch, self.env.device))
                self.state.batches_in_epoch = i + 1
                if not self._updated:
                    continue
                self.scheduler.step()
                self.state.step += 1
                if self.state.step % self.log_every == 0:
                    self._log_step(epoch)
                if self._done():
                    stopped = True
                    break
                if self.snapshot_steps and self.state.step % self.snapshot_steps == 0:
                    self.save_model_snapshot(f"model_state_step_{self.state.step - 1}.th")
                if self.ckpt_every and self.state.step % self.ckpt_every == 0:
                    self.save(step_file=bool(self.config.get("run", {}).get("keep_step_checkpoints")))
                stop = agreement.poll()
                if stop:
                    self._stop(stop, epoch)
            if hasattr(bar, "close"):
                bar.close()
            if self.meters.counts:
                self._log_step(epoch)
            if not stopped:
                self.state.epoch, self.state.batches_in_epoch = epoch + 1, 0
                if self.snapshot_epochs and (epoch + 1) % self.snapshot_epochs == 0:
                    self.save_model_snapshot(f"model_state_epoch_{epoch}.th")
            is_best = False
            if self.evaluate_fn is not None:
                if self.schedule.due(epoch, final=stopped or self._finished()):
                    is_best = self._evaluate_and_record(epoch)
                else:
                    logger.info("epoch %d: no evaluation (%s)", epoch, self.schedule)
            self.save(is_best=is_best)
            if not self._finished():
                stop = agreement.poll_now()
                if stop:
                    self._stop(stop, epoch)

    def _finished(self) -> bool:
        return self.state.epoch >= self.epochs or self._done()

    def _evaluate_and_record(self, epoch: int) -> bool:
        """Evaluate after ``epoch``, log it, record it in the history; True when it is the new best."""
        self.evaluating_epoch = epoch  # what the evaluate function may name its outputs after (prediction files)
        metrics = self.run_evaluation()
        is_best = self.history.add(self.state.step, epoch, metrics)
        if self.env.is_main:
            append_jsonl(self.output_dir / "metrics.jsonl", {"epoch": epoch, "step": self.state.step,
                                                              **{f"eval/{k}": v for k, v in metrics.items()}})
            logger.info("evaluation after epoch %d: %s", epoch, _fmt(metrics))
        return is_best


def _first_problem(error: RuntimeError) -> str:
    """The first missing / unexpected key or size mismatch of a load_state_dict error, on one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "")
    return detail[:300]


def _safe_len(obj) -> int | None:
    try:
        return len(obj)
    except TypeError:
        return None


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, mininterval=1.0)


def _fmt(metrics: Mapping) -> str:
    return " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
