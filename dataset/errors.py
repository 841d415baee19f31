"""The errors of the data layer: a bad annotation or data record (naming ``file:line``), too many bad records."""
from __future__ import annotations

import os
from typing import Any

from utils.errors import UserError

PathLike = str | os.PathLike


class AnnotationError(UserError, ValueError):
    """An annotation file is missing, malformed, or has a record the loaders cannot use (message names file/line)."""


class BadRecordError(AnnotationError):
    """A record that cannot be used; the message starts with ``file:line``."""

    def __init__(self, message: str, where: Any = ""):
        self.where = str(where) if where else ""
        super().__init__(f"{self.where}: {message}" if self.where else message)


class BadDataError(UserError, RuntimeError):
    """Too many bad records were skipped."""


def where(path: PathLike, line: int | str) -> str:
    """``file:line`` (or ``file [item]``) for error messages."""
    return f"{path}:{line}" if isinstance(line, int) else f"{path} [{line}]"
