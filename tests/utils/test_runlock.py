"""One run per output folder (utils/runlock.py): a live holder refuses others, a dead one's lock is taken over."""
import multiprocessing as mp
import os
import signal

import pytest

from utils.runlock import LOCK_NAME, RunLock, RunLockedError


def hold(folder, ready, release):
    lock = RunLock(folder)
    lock.acquire()
    ready.set()
    release.wait(60)
    lock.release()


@pytest.fixture
def holder(tmp_path):
    """A process of its own holding the folder's lock until told to release (or killed)."""
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    process = ctx.Process(target=hold, args=(str(tmp_path), ready, release))
    process.start()
    assert ready.wait(60)
    yield process, release
    if process.is_alive():  # (a killed waiter leaves the event's condition unusable: no set() then)
        release.set()
        process.join(10)


def test_a_live_holder_refuses_a_second_run_naming_itself(tmp_path, holder):
    process, release = holder
    with pytest.raises(RunLockedError) as info:
        RunLock(tmp_path).acquire()
    assert f"is in use by another run: pid {process.pid} on host" in str(info.value)
    assert str(tmp_path / LOCK_NAME) in str(info.value)
    release.set()
    process.join(10)
    assert not (tmp_path / LOCK_NAME).exists()  # a run that ends removes its lock
    lock = RunLock(tmp_path)
    lock.acquire()
    assert lock.describe_takeover() is None
    lock.release()


def test_the_lock_of_a_killed_holder_is_stale_and_taken_over(tmp_path, holder):
    process, _ = holder
    os.kill(process.pid, signal.SIGKILL)
    process.join(10)
    assert (tmp_path / LOCK_NAME).is_file()
    lock = RunLock(tmp_path)
    lock.acquire()
    assert f"took over the lock of a run that is gone: pid {process.pid} on host" in lock.describe_takeover()
    assert f'"pid": {os.getpid()}' in (tmp_path / LOCK_NAME).read_text()
    lock.release()
