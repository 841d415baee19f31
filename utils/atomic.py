"""Files of a run's output folder that appear whole or not at all.

A file is written to a temporary sibling ``.<name>.tmp<pid>``, flushed to the disk, then renamed over its name (an
atomic replace): a reader, or a run resumed after a crash, sees the previous file or the new one, never part of one.
A write that fails removes its temporary file, so a full disk is left as it was, and the error names the file and
what to do (one line, exit code 2; see ``utils.errors.disk_error``). A run killed while writing leaves its temporary
file behind: the next run into the folder removes such leftovers when it starts (:func:`remove_leftover_temp_files`).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Callable, IO

from utils.errors import disk_error

logger = logging.getLogger(__name__)

# Our temporary names (this module's, and utils.remote's download and marker scratch files): hidden, with a pid.
LEFTOVER = re.compile(r"^\..+\.(tmp|download|marker)\d+$")
RUN_FOLDER_MARKS = (".cclm-run.lock", "config.yaml")  # a sub-folder holding these is another run's: left alone


def temp_path(path: Path) -> Path:
    """The temporary sibling a write of ``path`` goes through."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool = True, kept: str = "") -> Path:
    """Write ``path`` through ``write(file)`` atomically (see the module doc). ``kept``: what the error message says
    is still intact when the write fails (e.g. "the previous checkpoint is intact")."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        cause = os_error_in(e)
        if cause is not None:
            user_error = disk_error(cause, path, kept or f"{path} is as it was before this write")
            if user_error is not None:
                raise user_error from e
        raise
    _sync_folder(path.parent)
    return path


def os_error_in(error: BaseException) -> OSError | None:
    """The OSError behind ``error`` (itself, or what it was raised from: torch.save reports a failed write of its
    file as a RuntimeError raised while handling the OSError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text), binary=False)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: some file systems cannot fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_leftover_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files an interrupted run left in ``folder`` (and its sub-folders that are not another
    run's); call it while holding the folder's run lock, when no write of ours is in flight. Returns what it removed."""
    removed: list[Path] = []
    pending = [Path(folder)]
    while pending:
        current = pending.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                if not any((path / mark).exists() for mark in RUN_FOLDER_MARKS):
                    pending.append(path)
            elif LEFTOVER.match(entry.name):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
