"""One run per output folder: ``<output_dir>/.cclm-run.lock``.

Rank 0 of a run holds an exclusive ``flock`` on the lock file for the run's lifetime and writes into it who holds
it (host, pid, start time, command). A second run into the folder is refused with one line naming the holder. The
kernel drops the lock when its holder dies, however it dies (SIGKILL included), so a lock file left by a dead run is
stale: the next run takes it over and logs whose it was. A run that ends removes the file.

``flock`` works on local file systems and on NFS (Linux emulates it with NFS byte-range locks); where a file system
has no locks at all the run goes ahead with a warning that concurrent runs are not prevented.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from utils.errors import UserError

logger = logging.getLogger(__name__)

LOCK_NAME = ".cclm-run.lock"


class RunLockedError(UserError):
    """Another live run holds the output folder."""


def _holder_text(info: dict) -> str:
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (started {info.get('started', '?')}: "
            f"{info.get('command', '?')})")


def _read_info(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    try:
        info = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        info = {}
    return info if isinstance(info, dict) else {}


class RunLock:
    """The lock of one output folder (see the module doc); :meth:`acquire` then :meth:`release`."""

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / LOCK_NAME
        self._fd: int | None = None
        self.taken_over: dict | None = None   # the holder of the stale lock this process took over

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the folder for this process, or raise :class:`RunLockedError` naming the live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                info = _read_info(fd)
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunLockedError(
                        f"{self.path.parent} is in use by another run: {_holder_text(info)}; wait for it to end, "
                        f"stop it, or choose another --output_dir (lock file {self.path})") from None
                logger.warning("%s: the file system cannot lock files (%s): a second run into this folder would not "
                               "be refused", self.path, e.strerror)
                return
            if not self._same_file(fd):  # the previous holder removed the file between our open and our lock
                os.close(fd)
                continue
            self.taken_over = _read_info(fd) or None
            self._write_info(fd)
            self._fd = fd

    def describe_takeover(self) -> str | None:
        """The log line for a stale lock this process took over (None when the folder was free)."""
        if not self.taken_over:
            return None
        return (f"took over the lock of a run that is gone: {_holder_text(self.taken_over)} "
                f"(lock file {self.path})")

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    @staticmethod
    def _write_info(fd: int) -> None:
        info = {"host": socket.gethostname(), "pid": os.getpid(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join([sys.executable, *sys.argv])}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(info) + "\n").encode("utf-8"))

    def release(self) -> None:
        """Remove the lock file and drop the lock (removing first: a run that opens it later finds a new file)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError as e:  # a read-only or vanished folder: the kernel still drops the lock below
            logger.warning("could not remove %s: %s", self.path, e)
        os.close(self._fd)
        self._fd = None
