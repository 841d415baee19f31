"""Logging to console + output_dir/log.txt on rank 0, JSON-lines metrics, running averages."""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Mapping

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(output_dir: str | os.PathLike | None, rank: int = 0, level: int = logging.INFO) -> None:
    """INFO on rank 0 (console + ``output_dir/log.txt``), WARNING elsewhere."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_cclm", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level if rank == 0 else logging.WARNING)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if output_dir is not None and rank == 0:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(output_dir) / "log.txt", encoding="utf-8"))
    for handler in handlers:
        handler._cclm = True
        handler.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        root.addHandler(handler)


def append_jsonl(path: str | os.PathLike, record: Mapping) -> None:
    """Append one JSON line (numbers made plain) to ``path``."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({k: _plain(v) for k, v in record.items()}, ensure_ascii=False) + "\n")


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunningMeans:
    """Running averages of named scalars, reset at will (per log interval or per epoch).

    Tensor values are summed where they live and read once, in ``means()``: reading a GPU value at every step
    would make the host wait for the step to finish before it could queue the next one.
    """

    def __init__(self):
        self.sums: dict = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.started = time.perf_counter()

    def update(self, values: Mapping, n=1) -> None:
        """Add each value with weight ``n`` (an int, or a 0-d tensor kept on the device, e.g. "was this step
        applied")."""
        if hasattr(n, "detach"):
            n = n.detach().reshape(()).double()
        for key, value in values.items():
            if hasattr(value, "detach"):
                value = value.detach().reshape(()).double()  # float64: thousands of float32 terms drift
            else:
                value = float(value)
            self.sums[key] = self.sums[key] + value * n
            self.counts[key] = self.counts[key] + n

    def means(self) -> dict[str, float]:
        """Each key's weighted mean (0 where its weights sum to 0)."""
        counts = {k: float(c) for k, c in self.counts.items()}
        return {k: float(self.sums[k]) / counts[k] if counts[k] > 0 else 0.0 for k in self.sums}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def reset(self) -> None:
        self.__init__()
