"""The demo's figures: training-loss curves and zero-shot R@1 per language over training, one panel per arm.

matplotlib runs on the Agg backend (no display needed). Inputs are plain records, so the figures can be redrawn
from a finished run's ``metrics.jsonl`` and ``results.json``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

LOSS_PREFIX = "loss_"
# the same loss keeps its colour in every panel
LOSS_COLOURS = {"itc": "C0", "ttc": "C1", "itm": "C2", "ttm": "C3", "mlm": "C4"}


def loss_series(records: Sequence[Mapping]) -> dict[str, tuple[list[int], list[float]]]:
    """{loss name: (steps, values)} from training log records (those with a ``step`` and ``loss_*`` keys)."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        if "step" not in record:
            continue
        for key, value in record.items():
            if key.startswith(LOSS_PREFIX) and isinstance(value, (int, float)):
                steps, values = series.setdefault(key[len(LOSS_PREFIX):], ([], []))
                steps.append(int(record["step"]))
                values.append(float(value))
    return series


def _panels(n: int, title: str):
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.0), squeeze=False, sharey=True)
    fig.suptitle(title)
    return fig, axes[0]


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_training_curves(arms: Mapping[str, Sequence[Mapping]], path: str | os.PathLike) -> Path:
    """One panel per arm: every ``loss_*`` of its log records against the optimiser step. Returns the PNG path."""
    if not arms:
        raise ValueError("plot_training_curves: no arm to plot")
    fig, axes = _panels(len(arms), "Training losses")
    for ax, (arm, records) in zip(axes, arms.items()):
        series = loss_series(records)
        if not series:
            raise ValueError(f"plot_training_curves: arm {arm!r} has no record with a step and a loss_* value")
        for k, (name, (steps, values)) in enumerate(series.items()):
            ax.plot(steps, values, label=name, marker=".", color=LOSS_COLOURS.get(name, f"C{5 + k % 5}"))
        ax.set_title(arm)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_recall_curves(arms: Mapping[str, Mapping], path: str | os.PathLike, chance: float | None = None,
                       metric: str = "text->image R@1 (%)") -> Path:
    """One panel per arm: R@1 of every language against the step.

    ``arms[name]`` is ``{"steps": [s0, s1, ...], "languages": {lang: [r1 at s0, r1 at s1, ...]}}``; ``chance``
    (percent) draws a dotted line.
    """
    if not arms:
        raise ValueError("plot_recall_curves: no arm to plot")
    fig, axes = _panels(len(arms), f"Zero-shot {metric} on held-out scenes during training")
    for ax, (arm, curve) in zip(axes, arms.items()):
        steps = list(curve["steps"])
        for lang, values in curve["languages"].items():
            if len(values) != len(steps):
                raise ValueError(f"plot_recall_curves: arm {arm!r}, language {lang!r} has {len(values)} values "
                                 f"for {len(steps)} steps")
            ax.plot(steps, values, label=lang, marker="o", linewidth=2.5 if lang == "en" else 1.5)
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle=":", label="chance")
        ax.set_title(arm)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(ncol=2)
    return _save(fig, path)
