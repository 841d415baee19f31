"""The one base class of the errors a user can fix, and the exit codes of a run.

A user error (a bad config, flag, annotation, data record, checkpoint or path, a full or read-only disk) ends the run
with one logged line and exit code 2 (no traceback); anything else is a bug and keeps its traceback. Each error's
message names what to fix: the file and line, the config key, or the flag.
"""
from __future__ import annotations

import errno


class UserError(Exception):
    """An error the user fixes (the message names the file, line, key or flag); scripts exit with code 2."""


class ReportedElsewhere(UserError):
    """A user error that another rank (rank 0) reports; this rank exits with code 2 without repeating it."""


USER_ERROR_EXIT_CODE = 2
STALLED_EXIT_CODE = 3        # a rank stopped answering (run.heartbeat_timeout_seconds); the job was ended
STOPPED_EXIT_CODE = 75       # stopped on a signal after saving checkpoint_latest.pth (sysexits' EX_TEMPFAIL)
EXIT_CODES = {
    0: "done",
    1: "an unexpected error (a bug): the traceback is above",
    USER_ERROR_EXIT_CODE: "a user error: the line above names the file, key or flag to fix",
    STALLED_EXIT_CODE: "a rank stopped answering: the line above names it",
    STOPPED_EXIT_CODE: "stopped on a signal after saving checkpoint_latest.pth: continue with --resume latest",
}
# 128 + N: killed by signal N before anything could be saved (as a shell reports it).

# Failures of the disk a run writes to, which the user fixes (free space, another --output_dir, permissions).
DISK_ERRNOS = {errno.ENOSPC: "the disk is full: free space on it",
               errno.EDQUOT: "the disk quota is exceeded: free space or raise the quota",
               errno.EFBIG: "the file is larger than this process may write (file-size limit, ulimit -f)",
               errno.EROFS: "the file system is read-only: choose a writable --output_dir",
               errno.EACCES: "permission denied: choose a folder you may write to",
               errno.EPERM: "operation not permitted: choose a folder you may write to"}


class DiskError(UserError):
    """Writing to the output folder failed for a reason the user fixes (full, read-only, no permission)."""

    def __init__(self, message: str, errno_: int | None = None):
        super().__init__(message)
        self.errno = errno_


def disk_error(error: OSError, path=None, kept: str = "") -> UserError | None:
    """A one-line :class:`DiskError` naming the file and the fix for a disk failure, or None for other errors.
    ``kept``: what is still intact (e.g. the previous checkpoint)."""
    advice = DISK_ERRNOS.get(error.errno)
    if advice is None:
        return None
    where = path or error.filename or "a file of the run"
    reason = error.strerror or str(error)
    return DiskError(f"cannot write {where}: {reason} ({advice}){'; ' + kept if kept else ''}", error.errno)
