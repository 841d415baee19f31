"""The checked-reading core every annotation reader uses: errors that name the file and line, and field checks.

:func:`iter_jsonl` yields the records of a JSON-lines file, :func:`read_json` a whole JSON document; :func:`require`,
:func:`string_field` and :func:`record_key` check the fields of one record. Every failure is an
:class:`AnnotationError` whose message starts with ``file:line`` (or ``file [item]``).
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from utils.errors import UserError

PathLike = str | os.PathLike


class AnnotationError(UserError, ValueError):
    """An annotation file is missing, malformed, or has a record the loaders cannot use (message names file/line)."""


def where(path: PathLike, line: int | str) -> str:
    """``file:line`` (or ``file [item]``) for error messages."""
    return f"{path}:{line}" if isinstance(line, int) else f"{path} [{line}]"


def open_text(path: PathLike):
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"annotation file not found: {path}")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_jsonl(path: PathLike, with_offsets: bool = False) -> Iterator[tuple]:
    """Yield ``(line_no, record)`` (or ``(line_no, byte_offset, record)``) for every non-blank line of a jsonl file.

    Every record must be a JSON object; a malformed line raises AnnotationError naming the file and the line.
    A missing final newline and trailing blank lines are accepted (IGLUE's ``wit/val_en.jsonl`` has no final newline).
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"annotation file not found: {path}")
    with open(path, "rb") as f:
        offset = 0
        for line_no, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8").strip()
            if not text:
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise AnnotationError(f"{path}:{line_no}: malformed JSON line ({e.msg}, column {e.colno})") from e
            if not isinstance(record, dict):
                raise AnnotationError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            yield (line_no, start, record) if with_offsets else (line_no, record)


def read_json(path: PathLike) -> Any:
    """A whole JSON file; malformed JSON raises AnnotationError naming the file, line and column."""
    with open_text(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise AnnotationError(f"{path}:{e.lineno}: malformed JSON ({e.msg}, column {e.colno})") from e


def require(record: dict, keys: Iterable[str], at: str) -> None:
    """Raise AnnotationError naming ``at`` if ``record`` lacks any of ``keys``."""
    missing = [k for k in keys if k not in record]
    if missing:
        raise AnnotationError(f"{at}: missing key(s) {missing}; the record has {sorted(record)}")


def string_field(record: dict, key: str, at: str) -> str:
    """``record[key]``, which must be a string (an AnnotationError naming ``at`` otherwise)."""
    value = record[key]
    if not isinstance(value, str):
        raise AnnotationError(f"{at}: {key!r} must be a string, got {type(value).__name__} {value!r:.60}")
    return value


def record_key(value: Any, at: str) -> str | int:
    """An image/question id usable as a dict key: a string or an integer (the JSON type is kept, as the reference does)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise AnnotationError(f"{at}: id {value!r} must be a string or an integer")
    return value

