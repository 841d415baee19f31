"""When a training run evaluates, what it keeps of every evaluation, and which evaluation is the best.

One rule for every task: the end of epoch ``e`` (0-based) is evaluated when ``e >= start_eval`` and
``(e + 1) % eval_interval == 0`` and ``(e + 1) % run.eval_every == 0``, and the end of the run (the last epoch, or the
step ``run.max_steps`` stops at) is always evaluated. The history of evaluations (step, epoch, metrics) is saved in
every training checkpoint, so a resumed run reports the same best evaluation as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

LAST = "last_evaluation"  # selection rule: the last evaluation is the best (runs without a selection split)


@dataclass(frozen=True)
class EvaluationSchedule:
    """Which epoch ends are evaluated (see the module docstring)."""

    start: int = 0
    interval: int = 1
    every: int = 1

    @classmethod
    def from_config(cls, config: Mapping) -> "EvaluationSchedule":
        """``start_eval``, ``eval_interval`` (fine-tuning configs) and ``run.eval_every`` (every config)."""
        run = config.get("run") or {}
        return cls(start=int(config.get("start_eval", 0) or 0),
                   interval=max(1, int(config.get("eval_interval", 1) or 1)),
                   every=max(1, int(run.get("eval_every", 1) or 1)))

    def due(self, epoch: int, final: bool) -> bool:
        """Whether the end of ``epoch`` is evaluated; ``final``: the run ends there (last epoch or max_steps)."""
        if final:
            return True
        done = epoch + 1
        return epoch >= self.start and done % self.interval == 0 and done % self.every == 0


class EvaluationHistory:
    """Every evaluation of a run by optimiser step, and the best one by ``metric`` (higher is better; the earliest
    wins ties) or, with ``metric=LAST``, the latest; ``metric=None`` chooses none."""

    def __init__(self, metric: str | None = None):
        self.metric = metric
        self.records: dict[int, dict] = {}   # step -> {"epoch": e, "metrics": {...}}

    def add(self, step: int, epoch: int, metrics: Mapping) -> bool:
        """Record an evaluation; True when it becomes the best."""
        before = self.best_step()
        self.records[int(step)] = {"epoch": int(epoch), "metrics": dict(metrics)}
        after = self.best_step()
        return after is not None and after == int(step) and after != before

    def best_step(self) -> int | None:
        """The step of the best evaluation, or None when no evaluation has the selection metric."""
        if self.metric is None or not self.records:
            return None
        if self.metric == LAST:
            return max(self.records)
        scored = [s for s in sorted(self.records) if self.metric in self.records[s]["metrics"]]
        if not scored:
            return None
        return max(scored, key=lambda s: (float(self.records[s]["metrics"][self.metric]), -s))

    def best(self) -> dict | None:
        """``{"step", "epoch", "metrics"}`` of the best evaluation (None when there is none)."""
        step = self.best_step()
        return None if step is None else {"step": step, **self.records[step]}

    def last(self) -> dict | None:
        """``{"step", "epoch", "metrics"}`` of the latest evaluation (None before the first)."""
        if not self.records:
            return None
        step = max(self.records)
        return {"step": step, **self.records[step]}

    def best_pointer(self) -> dict:
        """What checkpoints record of the best evaluation: ``{metric: value, "epoch", "step"}`` ({} without one)."""
        best = self.best()
        if best is None:
            return {}
        value = best["metrics"].get(self.metric) if self.metric != LAST else float(best["step"])
        return {str(self.metric): value, "epoch": best["epoch"], "step": best["step"]}

    def state_dict(self) -> dict:
        return {"metric": self.metric, "records": {int(k): dict(v) for k, v in self.records.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        self.records = {int(k): {"epoch": int(v["epoch"]), "metrics": dict(v["metrics"])}
                        for k, v in (state.get("records") or {}).items()}
