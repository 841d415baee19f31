"""A stalled rank ends the job, named (utils/heartbeat.py): a real two-process run through run.py whose second
worker the test stops with SIGSTOP; and the watch itself on a store the test drives."""
import datetime
import os
import signal
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from tests.processes import alive, free_port, kill_process_tree, process_tree
from tests.tasks.toy_script import launch, wait_for_step
from utils.errors import STALLED_EXIT_CODE
from utils.heartbeat import PREFIX, Heartbeat, beat_interval


def worker_of_rank(tree, rank):
    for pid in tree:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        except OSError:
            continue
        if env.get(b"RANK") == str(rank).encode() and b"toy_script" in open(f"/proc/{pid}/cmdline", "rb").read():
            return pid
    raise AssertionError(f"no worker of rank {rank} among {tree}")


@pytest.mark.slow  # about 25 s on 2 busy cores; the watch itself is tested below, in CI
def test_a_stopped_rank_ends_the_job_within_the_heartbeat_timeout_naming_it(tmp_path):
    out_dir = tmp_path / "run"
    run = launch(out_dir, "--opts", "toy.examples=960", "toy.step_seconds=0.2", "run.heartbeat_timeout_seconds=5",
                 dist="cpu:2")
    try:
        wait_for_step(out_dir, 1, run)
        tree = process_tree(run.pid)
        stalled = worker_of_rank(tree, 1)
        os.kill(stalled, signal.SIGSTOP)
        stopped_at = time.monotonic()
        out = run.communicate(timeout=110)[0]
        took = time.monotonic() - stopped_at
    finally:
        kill_process_tree(run.pid)
    print(f"SIGSTOP of rank 1 to the end of the job: {took:.1f} s (heartbeat timeout 5 s)")
    assert run.returncode == STALLED_EXIT_CODE, out[-3000:]
    assert took < 30, f"{took:.0f} s"  # 5 s of silence, then the launcher's 5 s close of a failed job
    assert f"rank 1 (" in out and f"pid {stalled}) has stopped answering" in out
    assert not [pid for pid in tree if alive(pid)]


@pytest.fixture
def store():
    port = free_port()
    server = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False,
                           timeout=datetime.timedelta(seconds=10))
    yield server


WATCHER = r"""
import datetime, logging, sys, time
import torch.distributed as dist
from utils.heartbeat import Heartbeat
logging.basicConfig(level=logging.INFO)
store = dist.TCPStore("127.0.0.1", int(sys.argv[1]), is_master=False, timeout=datetime.timedelta(seconds=10))
Heartbeat(0, 2, timeout=1.0, store=store).start()
time.sleep(30)  # the watch ends the process long before
"""


def test_a_watcher_whose_rank_falls_silent_ends_its_process_naming_the_rank(store, tmp_path):
    import subprocess
    import sys

    store.set(f"{PREFIX}who/1", "node7 pid 4242")
    store.add(f"{PREFIX}beat/1", 1)  # rank 1 beat once, then fell silent
    started = time.monotonic()
    child = subprocess.run([sys.executable, "-c", WATCHER, str(store.port)], capture_output=True, text=True,
                           timeout=60, cwd=Path(__file__).resolve().parents[2])
    took = time.monotonic() - started
    assert child.returncode == STALLED_EXIT_CODE, child.stderr[-3000:]
    assert "rank 1 (node7 pid 4242) has stopped answering" in child.stderr
    assert took < 30, f"{took:.0f} s"


def test_a_finished_rank_is_not_watched_and_a_live_one_is_not_stalled(store):
    watcher = Heartbeat(0, 2, timeout=1.0, store=store)
    beating = Heartbeat(1, 2, timeout=1.0, store=store)
    watcher.start()
    beating.start()
    time.sleep(2.5)  # > the timeout: rank 1 beats, so rank 0 must not have ended the process
    beating.stop()
    assert store.check([f"{PREFIX}done/1"])
    time.sleep(2.0)  # rank 1 is done and silent: still no stall
    watcher.stop()


def test_the_beat_interval_follows_the_timeout():
    assert beat_interval(60) == 5.0 and beat_interval(5) == 0.5 and beat_interval(0.5) == 0.2
