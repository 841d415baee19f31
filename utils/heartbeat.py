"""Ending a job whose rank has stalled, naming the rank.

A rank that dies ends the job at once (torchrun sees its exit), but a rank that is stopped (SIGSTOP, a frozen node,
a process swapped out for minutes) would hold every other rank in its next collective until the process group's
timeout (``run.dist_timeout_minutes``, 30 minutes by default, kept long for rank 0's one-time data preparation).
So every rank of a multi-process run beats a heartbeat: a background thread adds to a counter of its own in the
job's key-value store (torchrun's, at ``MASTER_ADDR:MASTER_PORT``) every few seconds, and watches the counter of the
next rank (rank r watches rank r + 1, the last watches rank 0: one read per rank and beat, whatever the job's size).
When the watched counter has not moved for ``run.heartbeat_timeout_seconds`` (60 by default; 0 turns it off), the
watcher logs which rank stalled (its host and pid) and ends its own process with ``STALLED_EXIT_CODE`` (3); torchrun
then ends the others. The beat is a thread, so it measures that the process is alive, not that training progresses:
a long evaluation or data preparation on a live rank is not a stall. A rank that finished marks itself done and is
not watched any longer; a watcher whose own thread did not run for a while (the whole job was stopped and continued)
starts counting afresh.
"""
from __future__ import annotations

import datetime
import logging
import os
import socket
import sys
import threading
import time

from utils.errors import STALLED_EXIT_CODE

logger = logging.getLogger(__name__)

PREFIX = "cclm-heartbeat/"


def beat_interval(timeout: float) -> float:
    """Seconds between beats: often enough that a stall is seen within a few percent of the timeout."""
    return max(0.2, min(5.0, timeout / 10.0))


class Heartbeat:
    """This rank's beat and its watch on the next rank; :meth:`start`, then :meth:`stop` when the run ends."""

    def __init__(self, rank: int, world_size: int, timeout: float, store=None):
        self.rank, self.world_size, self.timeout = rank, world_size, float(timeout)
        self.watched = (rank + 1) % world_size
        self.interval = beat_interval(self.timeout)
        self._store = store
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.world_size < 2 or self.timeout <= 0:
            return
        store = self._store or self._connect()
        store.set(f"{PREFIX}who/{self.rank}", f"{socket.gethostname()} pid {os.getpid()}")
        store.add(f"{PREFIX}beat/{self.rank}", 1)
        self._store = store
        self._thread = threading.Thread(target=self._run, name="cclm-heartbeat", daemon=True)
        self._thread.start()

    def _connect(self):
        import torch.distributed as dist

        return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                             timeout=datetime.timedelta(seconds=max(30.0, self.timeout)), wait_for_workers=False)

    def stop(self) -> None:
        """Stop beating and mark this rank done (its watcher stops watching it)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
        self._thread = None
        try:
            self._store.set(f"{PREFIX}done/{self.rank}", "1")
        except Exception:  # the store is gone with its host: nobody is left to watch us
            pass

    def _run(self) -> None:
        store, watched = self._store, f"{PREFIX}beat/{self.watched}"
        last_value, last_change, last_loop = None, time.monotonic(), time.monotonic()
        while not self._stop.wait(self.interval):
            try:
                store.add(f"{PREFIX}beat/{self.rank}", 1)
                value = store.add(watched, 0)
                if store.check([f"{PREFIX}done/{self.watched}"]):
                    return
            except Exception as e:  # the store's host (torchrun's agent) is gone: the job is ending anyway
                logger.debug("heartbeat: the store is unreachable (%s)", e)
                return
            now = time.monotonic()
            if now - last_loop > 3 * self.interval + 1:
                last_change = now  # this process itself did not run for a while: count afresh
            last_loop = now
            if value != last_value:
                last_value, last_change = value, now
            elif now - last_change > self.timeout:
                self._end_job(store, now - last_change)

    def _end_job(self, store, silent: float) -> None:
        try:
            who = store.get(f"{PREFIX}who/{self.watched}").decode("utf-8", "replace")
        except Exception:
            who = "host and pid unknown"
        logger.error("rank %d (%s) has stopped answering: no heartbeat for %.0f s (run.heartbeat_timeout_seconds=%g;"
                     " the process is stopped, frozen or hung); ending the job", self.watched, who, silent,
                     self.timeout)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(STALLED_EXIT_CODE)
