"""The checked-reading layer every annotation reader uses (docs/data-formats.md#checked-reading).

* Parsing (:mod:`dataset.jsondoc`): JSON lines (:meth:`RecordReader.jsonl`, :func:`iter_jsonl`) and whole JSON
  documents (:meth:`RecordReader.json`, :func:`read_json_records`, :func:`read_json`) with the 1-based physical line
  of every record, a UTF-8 byte-order mark and CRLF line ends accepted, and a duplicate key or a non-JSON number
  (``NaN``, ``Infinity``) an error. The errors are :mod:`dataset.errors`.
* Fields: :func:`require`, :func:`string_field`, :func:`string_list`, :func:`record_key`, :func:`integer_id` check one
  record's fields against its format; :class:`ImageRoot` resolves an image path (symlinks followed) and refuses one
  that leaves its root, before anything is opened.
* Bad records: a :class:`RecordReader` raises the first bad record's :class:`AnnotationError` (``file:line: what``),
  or, under a policy with ``skip_bad_samples`` (:func:`configure_reading`), logs it, counts it per file and leaves it
  out, and raises :class:`BadDataError` once more than ``max_bad_fraction`` of a file's records were bad. The counts
  of every file read in this process are :func:`read_report`.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from dataset.errors import AnnotationError, BadDataError, BadRecordError, PathLike, where
from dataset.jsondoc import (JsonRecords, iter_jsonl, jsonl_lines, open_text, parse_json_line, parse_jsonl_record,
                             read_json, read_json_records)
from utils.config import ConfigError

logger = logging.getLogger(__name__)

# the names other modules take from here: the layer's errors and readers
__all__ = ["AnnotationError", "BadDataError", "BadRecordError", "FileTally", "ImageRoot", "ReadPolicy", "ReadReport",
           "RecordReader", "configure_reading", "count_event", "file_name_field", "integer_id", "iter_jsonl",
           "json_object", "jsonl_lines", "open_text", "parse_json_line", "parse_jsonl_record", "read_json",
           "read_json_records", "read_policy", "read_report", "record_key", "reject_late", "require",
           "string_field", "string_list", "where"]


# ---------------------------------------------------------------------------------------------------- fields

def require(record: dict, keys: Iterable[str], at: str) -> None:
    """Raise AnnotationError naming ``at`` if ``record`` lacks any of ``keys``."""
    missing = [k for k in keys if k not in record]
    if missing:
        raise AnnotationError(f"{at}: missing key(s) {missing}; the record has {sorted(record)}")


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.60}"


def json_object(value: Any, at: str) -> dict:
    """``value``, which must be a JSON object (an AnnotationError naming ``at`` otherwise)."""
    if not isinstance(value, dict):
        raise AnnotationError(f"{at}: expected a JSON object, got {_kind(value)}")
    return value


def string_field(record: dict, key: str, at: str) -> str:
    """``record[key]``, which must be a string (an AnnotationError naming ``at`` otherwise)."""
    value = record[key]
    if not isinstance(value, str):
        raise AnnotationError(f"{at}: {key!r} must be a string, got {_kind(value)}")
    return value


def string_list(record: dict, key: str, at: str, allow_null: bool = False) -> list:
    """``record[key]``, which must be a non-empty list of strings (of strings or nulls with ``allow_null``): a lone
    string is an error, not a one-item list."""
    value = record[key]
    allowed = (str, type(None)) if allow_null else str
    if not isinstance(value, list) or not value or not all(isinstance(v, allowed) for v in value):
        what = "strings or nulls" if allow_null else "strings"
        raise AnnotationError(f"{at}: {key!r} must be a non-empty list of {what}, got {_kind(value)}")
    return value


def record_key(value: Any, at: str) -> str | int:
    """An image/question id usable as a dict key: a string or an integer (the JSON type is kept, as the reference does)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise AnnotationError(f"{at}: id {value!r} must be a string or an integer")
    return value


def integer_id(value: Any, at: str, what: str = "id") -> str:
    """An id that must be an integer, given as a JSON integer or a string of digits; returned as its digit string."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return value
    raise AnnotationError(f"{at}: {what} {value!r} must be a non-negative integer (or a string of digits)")


def file_name_field(value: Any, at: str, what: str) -> str:
    """A value that names one file (an image id): a non-empty string or integer without a path separator."""
    text = str(record_key(value, at))
    if not text.strip() or "/" in text or "\\" in text or text in (".", "..") or "\x00" in text:
        raise AnnotationError(f"{at}: {what} {value!r} must name a file (no path separator, not '.' or '..')")
    return text


class ImageRoot:
    """An image folder: :meth:`resolve` turns an annotation's image path into the file to open, refusing a path that
    leaves the folder (``..``, an absolute path elsewhere, a symlink pointing outside) before anything is opened."""

    def __init__(self, root: PathLike, remember: bool = True):
        self.root = Path(root)
        self.real = os.path.realpath(self.root)
        self._resolved: dict[str, str] | None = {} if remember else None  # name -> path (annotation files repeat)

    def resolve(self, name: Any, at: str, must_exist: bool = False) -> str:
        """The real path of ``name`` under the root (``must_exist``: the file must exist)."""
        if not isinstance(name, str) or not name.strip() or "\x00" in name:
            raise AnnotationError(f"{at}: an image path must be a non-empty string, got {name!r}")
        path = self._resolved.get(name) if self._resolved is not None else None
        if path is None:
            path = os.path.realpath(os.path.join(self.real, name))
            if path != self.real and not path.startswith(self.real.rstrip(os.sep) + os.sep):
                raise AnnotationError(f"{at}: image path {name!r} leaves the image root {self.root} (it resolves to "
                                      f"{path}); an annotation may only name files inside its image root")
            if self._resolved is not None:
                self._resolved[name] = path
        if must_exist and not os.path.isfile(path):
            raise AnnotationError(f"{at}: image file not found: {path}")
        return path


# ---------------------------------------------------------------------------------------------------- policy, report

@dataclass(frozen=True)
class ReadPolicy:
    """What a bad record does: stop the run (default), or, with ``skip_bad_samples``, get logged, counted and left
    out until more than ``max_bad_fraction`` of a file's records are bad."""

    skip_bad_samples: bool = False
    max_bad_fraction: float = 0.01

    def __post_init__(self):
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be within [0, 1], got {self.max_bad_fraction}")


_policy = ReadPolicy()


def read_policy() -> ReadPolicy:
    """This process's policy for bad records (set by :func:`configure_reading`)."""
    return _policy


def configure_reading(config: Mapping) -> ReadPolicy:
    """Set this process's policy from a config's ``skip_bad_samples`` / ``max_bad_fraction`` and start a new read
    report: the one call a run makes before it reads its annotation files."""
    global _policy
    try:
        _policy = ReadPolicy(bool(config.get("skip_bad_samples", False)),
                             float(config.get("max_bad_fraction", 0.01)))
    except ValueError as e:
        raise ConfigError(f"config 'max_bad_fraction': {e}") from None
    _report.clear()
    return _policy


@dataclass
class FileTally:
    """The records read from one file and the bad ones skipped; raises once the bad fraction passes the bound."""

    path: str
    policy: ReadPolicy
    read: int = 0
    skipped: int = 0
    first_error: str = ""

    def reject(self, error: AnnotationError) -> None:
        """A bad record: raise it, or (skipping) log and count it."""
        if not self.policy.skip_bad_samples:
            raise error
        self.skipped += 1
        self.first_error = self.first_error or str(error)
        if self.skipped <= 10 or self.skipped % 1000 == 0:
            logger.warning("skipped bad record %d of %s: %s", self.skipped, self.path, error)

    def check(self) -> None:
        """BadDataError when more than ``max_bad_fraction`` of the records read were bad."""
        if self.skipped and self.skipped > self.policy.max_bad_fraction * self.read:
            raise BadDataError(f"{self.path}: {self.skipped} of {self.read} records were bad "
                               f"({self.skipped / self.read:.2%} > max_bad_fraction {self.policy.max_bad_fraction:.2%}"
                               f"); the first: {self.first_error}")


class ReadReport:
    """Per file read in this process: ``{"read": records, "skipped": bad records left out}``, and counts of other
    events worth reporting (e.g. ``boxes_outside_image``)."""

    def __init__(self):
        self.tallies: dict[str, FileTally] = {}
        self.events: dict[str, dict[str, int]] = {}

    def tally(self, path: PathLike, policy: ReadPolicy) -> FileTally:
        """A fresh tally for ``path`` (reading a file again replaces its counts)."""
        tally = self.tallies[str(path)] = FileTally(str(path), policy)
        return tally

    def existing(self, path: PathLike) -> FileTally:
        """The tally of a file already read (a fresh one if it was not)."""
        return self.tallies.get(str(path)) or self.tally(path, read_policy())

    def count(self, path: PathLike, event: str, n: int = 1) -> int:
        """Add ``n`` to the count of ``event`` in ``path``; the new count."""
        counts = self.events.setdefault(str(path), {})
        counts[event] = counts.get(event, 0) + n
        return counts[event]

    def as_dict(self) -> dict[str, dict[str, int]]:
        out = {path: {"read": t.read, "skipped": t.skipped} for path, t in self.tallies.items()}
        for path, counts in self.events.items():
            out.setdefault(path, {}).update(counts)
        return out

    def clear(self) -> None:
        self.tallies.clear()
        self.events.clear()


_report = ReadReport()


def read_report() -> dict[str, dict[str, int]]:
    """``{file: {"read": n, "skipped": k}}`` for every annotation file this process has read (for results.json)."""
    return _report.as_dict()


def count_event(path: PathLike, event: str, n: int = 1) -> int:
    """Count ``n`` occurrences of ``event`` (e.g. ``boxes_outside_image``) in ``path`` for the read report (in this
    process: a DataLoader worker's counts stay in the worker, which logs them); the new count."""
    return _report.count(path, event, n)


def reject_late(error: AnnotationError, path: PathLike) -> None:
    """A record of a file already read turns out bad (e.g. its image leaves the root): raise, or count it against
    that file and re-check its bad fraction."""
    tally = _report.existing(path)
    tally.reject(error)
    tally.check()


class RecordReader:
    """Reads the records of one annotation file under this process's policy (or ``policy``).

    ``with RecordReader(path) as reader``: iterate :meth:`jsonl` or :meth:`json`, and build each record inside
    ``with reader.record(at):`` (an AnnotationError there raises, or with skipping leaves the record out). On a
    normal exit the file's bad fraction is checked and its counts go to the read report (under the file it was
    converted from, see :meth:`stand_for`).
    """

    def __init__(self, path: PathLike, policy: ReadPolicy | None = None):
        self.path = Path(path)
        self.policy = policy or read_policy()
        self.tally = FileTally(str(self.path), self.policy)

    @property
    def skipping(self) -> bool:
        return self.policy.skip_bad_samples

    def __enter__(self) -> "RecordReader":
        if not self.path.is_file():
            raise AnnotationError(f"annotation file not found: {self.path}")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            _report.tallies[self.tally.path] = self.tally
            self.tally.check()
        return False

    def stand_for(self, source: PathLike) -> None:
        """Count and report this file's records under ``source``, the file they were converted from."""
        self.tally.path = str(source)

    @contextlib.contextmanager
    def record(self, at: str):
        """Count one record; an AnnotationError while building it raises, or (skipping) leaves it out."""
        self.tally.read += 1
        try:
            yield
        except AnnotationError as error:
            self.tally.reject(error)

    def jsonl(self, with_offsets: bool = False, required: Iterable[str] = ()) -> Iterator[tuple]:
        """``(at, record)`` (or ``(at, byte offset, record)``) per JSON-object line holding every ``required`` key;
        other lines are bad records."""
        for line_no, offset, raw in jsonl_lines(self.path):
            at = where(self.path, line_no)
            try:
                record = parse_jsonl_record(raw, at)
                require(record, required, at)
            except AnnotationError as error:
                self._reject(error)
                continue
            yield (at, offset, record) if with_offsets else (at, record)

    def json(self, under: Iterable[str] = ()) -> tuple[str, Iterator[tuple[str, Any, Any]]]:
        """(form, ``(at, key, value)`` per record) of a JSON document; a record with a duplicate key or non-JSON
        number inside is a bad record, and so is a repeated key of the top-level object."""
        records = read_json_records(self.path, under)
        return records.form, self._usable(records)

    def json_objects(self, required: Iterable[str] = ()) -> Iterator[tuple[str, dict]]:
        """``(at, object)`` per item of a JSON document whose top level is a list; an item that is not an object or
        lacks a ``required`` key is a bad record, a top level that is not a list an error."""
        records = read_json_records(self.path)
        if records.form != "list":
            raise AnnotationError(f"{where(self.path, records.line)}: expected a JSON list of objects, got an object")
        for at, _, value in self._usable(records):
            try:
                require(json_object(value, at), required, at)
            except AnnotationError as error:
                self._reject(error)
                continue
            yield at, value

    def _reject(self, error: AnnotationError) -> None:
        """A record found bad before the caller builds it: count it as read, then raise or skip it."""
        self.tally.read += 1
        self.tally.reject(error)

    def _usable(self, records: JsonRecords) -> Iterator[tuple[str, Any, Any]]:
        for item in records.items:
            at = where(self.path, item.line)
            if item.error or item.duplicate_of:
                line, message = item.error or (item.line, f"duplicate key {item.key!r} (first at line "
                                                          f"{item.duplicate_of})")
                self._reject(AnnotationError(f"{where(self.path, line)}: {message}"))
                continue
            yield at, item.key, item.value
