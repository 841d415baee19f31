"""Strict JSON with lines: JSON lines and whole JSON documents read so that every record knows its 1-based physical
line (docs/data-formats.md#checked-reading).

A UTF-8 byte-order mark and CRLF line ends are accepted; a duplicate key in one object and ``NaN`` / ``Infinity``
(which Python's json module accepts) are errors. A document is walked at its record level in Python, which gives each
record's line, while each record is decoded by the C decoder.
"""
from __future__ import annotations

import bisect
import contextlib
import gc
import gzip
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from dataset.errors import AnnotationError, PathLike, where


class _NotStrictJson(Exception):
    """Valid to Python's json module but not to ours: a duplicate key or a non-JSON number."""


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _NotStrictJson(f"duplicate key {duplicate!r} in one object")
    return record


def _reject_constant(name: str):
    raise _NotStrictJson(f"{name} is not a JSON number")


_STRICT = json.JSONDecoder(object_pairs_hook=_object_without_duplicates, parse_constant=_reject_constant)
_LENIENT = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def parse_json_line(text: str | bytes) -> Any:
    """The JSON value of one line (a ValueError says what is wrong: syntax, duplicate key, NaN, encoding)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"not UTF-8 text (byte {e.start})") from None
    text = text.lstrip("\ufeff").strip()
    try:
        value, end = _STRICT.raw_decode(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON ({e.msg}, column {e.colno})") from None
    except _NotStrictJson as e:
        raise ValueError(str(e)) from None
    if end != len(text):
        raise ValueError(f"malformed JSON (extra data, column {end + 1})")
    return value


class _Source:
    """A document's text and the 1-based line of any position in it."""

    def __init__(self, path: PathLike, text: str):
        self.path, self.text = path, text
        self._newlines: list[int] | None = None

    def line(self, pos: int) -> int:
        if self._newlines is None:
            self._newlines = [m.start() for m in re.finditer("\n", self.text)]
        return bisect.bisect_left(self._newlines, pos) + 1

    def at(self, pos: int) -> str:
        return where(self.path, self.line(pos))


@dataclass(slots=True)
class JsonItem:
    """One record of a JSON document: its key (object) or index (list), the line where it starts, its value, and
    what makes it unusable (a duplicate key or non-JSON number inside it; ``duplicate_of``: the line of the first
    item with the same key)."""

    key: str | int
    line: int
    value: Any = None
    error: tuple[int, str] | None = None  # (line, what)
    duplicate_of: int | None = None


@dataclass
class JsonRecords:
    """The records of a JSON document: the items of its top-level list or object (``form``)."""

    path: str
    form: str  # "list" or "object"
    items: list[JsonItem] = field(default_factory=list)
    line: int = 1  # where the list or object starts


class _Walker:
    """Walks a document's record level in Python (for the lines); decodes each record with the C decoder."""

    def __init__(self, source: _Source):
        self.src, self.text = source, source.text

    def skip(self, pos: int) -> int:
        return _WHITESPACE.match(self.text, pos).end()

    def fail(self, pos: int, message: str):
        raise AnnotationError(f"{self.src.at(min(pos, len(self.text)))}: malformed JSON ({message})")

    def expect(self, pos: int, chars: str) -> None:
        if pos >= len(self.text):
            self.fail(pos, f"expected {' or '.join(map(repr, chars))}, but the file ends")
        if self.text[pos] not in chars:
            self.fail(pos, f"expected {' or '.join(map(repr, chars))}, found {self.text[pos]!r}")

    def decode(self, pos: int) -> tuple[Any, int, tuple[int, str] | None]:
        """(value, end, strictness error) of the value at ``pos``; a syntax error ends the walk."""
        try:
            value, end = _STRICT.raw_decode(self.text, pos)
            return value, end, None
        except json.JSONDecodeError as e:
            self.fail(e.pos, f"{e.msg}, column {self.column(e.pos)}")
        except _NotStrictJson:
            value, end = _LENIENT.raw_decode(self.text, pos)
            return value, end, self.first_strictness_error(pos)

    def column(self, pos: int) -> int:
        return pos - self.text.rfind("\n", 0, pos)

    def first_strictness_error(self, pos: int) -> tuple[int, str]:
        """(line, what) of the first duplicate key or non-JSON number of the value at ``pos``."""
        found: list[tuple[int, str]] = []

        def visit(pos: int) -> int:
            pos = self.skip(pos)
            char = self.text[pos]
            if char in "[{":
                keys: dict[str, int] = {}
                pos = self.skip(pos + 1)
                closing = "]" if char == "[" else "}"
                while self.text[pos] != closing:
                    if char == "{":
                        key, key_end = _LENIENT.raw_decode(self.text, pos)
                        if key in keys and not found:
                            found.append((self.src.line(pos), f"duplicate key {key!r} (first at line {keys[key]})"))
                        keys.setdefault(key, self.src.line(pos))
                        pos = self.skip(self.skip(key_end) + 1)
                    pos = self.skip(visit(pos))
                    if self.text[pos] == ",":
                        pos = self.skip(pos + 1)
                return pos + 1
            value, end = _LENIENT.raw_decode(self.text, pos)
            if isinstance(value, float) and not math.isfinite(value) and not found:
                found.append((self.src.line(pos), f"{self.text[pos:end]} is not a JSON number"))
            return end

        visit(pos)
        return found[0] if found else (self.src.line(pos), "not strict JSON")

    def items(self, pos: int, form: str) -> tuple[list[JsonItem], int]:
        """The items of the list or object starting at ``pos``, and the position after it (a tight loop: GQA's
        training file has about a million records)."""
        text, skip, decode, line = self.text, _WHITESPACE.match, _STRICT.raw_decode, self.src.line
        is_object, closing = form == "object", "]" if form == "list" else "}"
        items: list[JsonItem] = []
        first_line: dict[str, int] = {}
        pos = skip(text, pos + 1).end()
        if text.startswith(closing, pos):
            return items, pos + 1
        while True:
            start = pos
            if is_object:
                if not text.startswith('"', pos):
                    self.expect(pos, '"')
                key, pos = self.decode(pos)[:2]
                pos = skip(text, pos).end()
                if not text.startswith(":", pos):
                    self.expect(pos, ":")
                pos = skip(text, pos + 1).end()
            else:
                key = len(items)
            try:
                value, end = decode(text, pos)
                error = None
            except (json.JSONDecodeError, _NotStrictJson):
                value, end, error = self.decode(pos)
            item = JsonItem(key, line(start), value, error)
            if is_object:
                item.duplicate_of = first_line.get(key)
                first_line.setdefault(key, item.line)
            items.append(item)
            pos = skip(text, end).end()
            if text.startswith(",", pos):
                pos = skip(text, pos + 1).end()
            elif text.startswith(closing, pos):
                return items, pos + 1
            else:
                self.expect(pos, "," + closing)

    def records(self, pos: int, under: tuple[str, ...]) -> tuple[JsonRecords, int]:
        """The records at ``pos`` (after descending into the keys ``under``), and the position after the value."""
        if self.text[pos] not in "[{":
            value = self.decode(pos)[0]
            raise AnnotationError(f"{self.src.at(pos)}: expected a list or an object of records, got "
                                  f"{type(value).__name__} {value!r:.40}")
        form = "list" if self.text[pos] == "[" else "object"
        if not under:
            items, end = self.items(pos, form)
            return JsonRecords(str(self.src.path), form, items, self.src.line(pos)), end
        self.expect(pos, "{")
        found, pos = None, self.skip(pos + 1)
        while pos < len(self.text) and self.text[pos] != "}":
            self.expect(pos, '"')
            key, pos = self.decode(pos)[:2]
            pos = self.skip(pos)
            self.expect(pos, ":")
            pos = self.skip(pos + 1)
            if key == under[0] and found is None:
                found, pos = self.records(pos, under[1:])
            else:
                pos = self.decode(pos)[1]
            pos = self.skip(pos)
            self.expect(pos, ",}")
            pos = self.skip(pos + 1) if self.text[pos] == "," else pos
        self.expect(pos, "}")
        if found is None:
            raise AnnotationError(f"{self.src.path}: no top-level key {under[0]!r}")
        return found, pos + 1


def _document_text(path: Path) -> str:
    """The file as text: UTF-8, a byte-order mark replaced by a space (positions and lines stay), gzip unpacked."""
    if not path.is_file():
        raise AnnotationError(f"annotation file not found: {path}")
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise AnnotationError(f"{where(path, line)}: not UTF-8 text (byte {e.start})") from None
    return " " + text[1:] if text.startswith("\ufeff") else text


@contextlib.contextmanager
def _collector_paused():
    """Pause the cyclic garbage collector: it would rescan the growing list of records again and again (3x slower
    on a million records); the records hold no cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_json_records(path: PathLike, under: Iterable[str] = ()) -> JsonRecords:
    """The records of a JSON document: the items of its top-level list or object (or of the list or object found by
    following the keys ``under``), each with its 1-based line. A syntax error anywhere is an AnnotationError naming
    its line; a duplicate key or non-JSON number inside a record marks that record (``JsonItem.error``)."""
    path = Path(path)
    walker = _Walker(_Source(path, _document_text(path)))
    start = walker.skip(0)
    if start >= len(walker.text):
        raise AnnotationError(f"{where(path, walker.src.line(start))}: the file is empty (expected a JSON document)")
    with _collector_paused():
        records, end = walker.records(start, tuple(under))
    end = walker.skip(end)
    if end != len(walker.text):
        walker.fail(end, "extra data after the JSON value")
    return records


def read_json(path: PathLike) -> Any:
    """A whole JSON document (strict: a duplicate key or non-JSON number anywhere is an AnnotationError naming its
    line, as is a syntax error)."""
    path = Path(path)
    walker = _Walker(_Source(path, _document_text(path)))
    start = walker.skip(0)
    if start >= len(walker.text):
        raise AnnotationError(f"{where(path, walker.src.line(start))}: the file is empty (expected a JSON document)")
    value, end, error = walker.decode(start)
    if error:
        raise AnnotationError(f"{where(path, error[0])}: {error[1]}")
    end = walker.skip(end)
    if end != len(walker.text):
        walker.fail(end, "extra data after the JSON value")
    return value


def open_text(path: PathLike):
    """A text file (``.gz``: unpacked) opened for reading, or an AnnotationError when it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"annotation file not found: {path}")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def jsonl_lines(path: PathLike) -> Iterator[tuple[int, int, bytes]]:
    """(1-based line, byte offset, raw bytes) of every non-blank line of a JSON-lines file."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"annotation file not found: {path}")
    with open(path, "rb") as f:
        offset = 0
        for line_no, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            if raw.strip():
                yield line_no, start, raw


def parse_jsonl_record(raw: bytes | str, at: str) -> dict:
    """The JSON object of one line (an AnnotationError naming ``at`` otherwise)."""
    try:
        record = parse_json_line(raw)
    except ValueError as e:
        raise AnnotationError(f"{at}: {e}") from None
    if not isinstance(record, dict):
        raise AnnotationError(f"{at}: expected a JSON object, got {type(record).__name__}")
    return record


def iter_jsonl(path: PathLike, with_offsets: bool = False) -> Iterator[tuple]:
    """Yield ``(line_no, record)`` (or ``(line_no, byte_offset, record)``) for every non-blank line of a jsonl file.

    Every record must be a JSON object; a bad line raises AnnotationError naming the file and the line. A missing
    final newline, blank lines, a byte-order mark and CRLF line ends are accepted.
    """
    path = Path(path)
    for line_no, offset, raw in jsonl_lines(path):
        record = parse_jsonl_record(raw, where(path, line_no))
        yield (line_no, offset, record) if with_offsets else (line_no, record)
