"""Logging to console + output_dir/log.txt on rank 0, JSON-lines metrics, running averages.

``log.txt`` is appended to by every (re)start of a run in its folder; each start writes a marker line first
(:data:`START_MARKER`, with the time, host, pid and command). ``metrics.jsonl`` holds each step's row once: a
resumed run drops the rows the interrupted run wrote after its checkpoint (:func:`truncate_jsonl_after_step`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Mapping

from utils.atomic import write_text_atomically

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
        log_file = Path(output_dir) / "log.txt"
        mark_start(log_file)
        handlers.append(QuietFileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler._cclm = True
        handler.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        root.addHandler(handler)


START_MARKER = "==== start"


def mark_start(log_file: Path) -> None:
    """Append the line that marks a (re)start of the run to ``log_file``."""
    line = (f"{START_MARKER} {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()}, pid {os.getpid()}: "
            f"{' '.join([Path(sys.executable).name, *sys.argv])} ====\n")
    with open(log_file, "a", encoding="utf-8") as f:
        f.write(line)


class QuietFileHandler(logging.FileHandler):
    """A FileHandler that, when its file cannot be written (a full disk), says so once on the console and stops,
    instead of printing a traceback for every record."""

    broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.broken:
            self.broken = True
            error = sys.exc_info()[1]
            sys.stderr.write(f"log: cannot write {self.baseFilename} ({error}); log lines go to the console only\n")


def append_jsonl(path: str | os.PathLike, record: Mapping) -> None:
    """Append one JSON line (numbers made plain) to ``path``; a failed write (a full disk) leaves the file as it was."""
    data = memoryview((json.dumps({k: _plain(v) for k, v in record.items()}, ensure_ascii=False) + "\n").encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError:
            os.ftruncate(fd, size)  # no half row
            raise
    finally:
        os.close(fd)


def truncate_jsonl_after_step(path: str | os.PathLike, step: int) -> int:
    """Drop the rows of a metrics file whose ``step`` is past ``step`` (and unreadable lines, e.g. a line cut short by
    a crash); rewrites the file atomically and returns how many rows went."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            dropped += bool(line.strip())
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        write_text_atomically(path, "".join(f"{line}\n" for line in kept))
    return dropped


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
