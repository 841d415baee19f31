"""Where data files live: local paths or fsspec URLs (``s3://bucket/shards/``, ``gs://``, ``hdfs://``, ``https://``),
with brace-expanded lists (``shards-{00000..09999}.tar``, expanded by ``braceexpand`` as webdataset does).

A list entry is a file, a folder (its files with the wanted suffix; hidden and ``_``-prefixed names are left out) or
a brace pattern whose every expansion must exist. Local entries stay :class:`~pathlib.Path` objects; URLs stay
strings. Remote reads go through fsspec (see :mod:`utils.remote` for credentials and endpoints).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Sequence

from braceexpand import braceexpand

from utils.remote import is_url, url_filesystem

DataPath = Path | str  # a local path or a URL


def expand_braces(entry: str) -> list[str]:
    """``a-{0..2}.tar`` -> ``[a-0.tar, a-1.tar, a-2.tar]`` (zero padding kept); other strings unchanged."""
    return list(braceexpand(entry))


def _folder_files(entry: DataPath, suffixes: tuple[str, ...]) -> list[DataPath] | None:
    """The wanted files of a folder (None when ``entry`` is not a folder)."""
    def wanted(name: str) -> bool:
        return name.endswith(suffixes) and not name.startswith((".", "_"))

    if not is_url(entry):
        path = Path(entry)
        return [p for p in path.iterdir() if p.is_file() and wanted(p.name)] if path.is_dir() else None
    fs, root = url_filesystem(str(entry))
    if not fs.isdir(root):
        return None
    return [fs.unstrip_protocol(info["name"]) for info in fs.ls(root, detail=True)
            if info.get("type") == "file" and wanted(info["name"].rsplit("/", 1)[-1])]


def _exists(entry: DataPath) -> bool:
    if not is_url(entry):
        return Path(entry).is_file()
    fs, path = url_filesystem(str(entry))
    return fs.isfile(path)


def list_data_files(entries: DataPath | Sequence[DataPath], suffixes: str | tuple[str, ...]) -> list[DataPath]:
    """The files named by ``entries`` (files, folders, brace patterns; local or URLs), sorted by name."""
    if isinstance(entries, (str, os.PathLike)):
        entries = [entries]
    suffixes = (suffixes,) if isinstance(suffixes, str) else tuple(suffixes)
    files: dict[str, DataPath] = {}
    for entry in entries:
        for name in expand_braces(str(entry)):
            item: DataPath = name if is_url(name) else Path(name)
            found = _folder_files(item, suffixes)
            if found is not None:
                if not found:
                    raise FileNotFoundError(f"{item}: the folder holds no {'/'.join(suffixes)} file")
                files.update((str(f), f) for f in found)
            elif _exists(item):
                files[str(item)] = item
            else:
                raise FileNotFoundError(f"{item}: no such file or folder")
    if not files:
        raise ValueError("no data file was given")
    return [files[key] for key in sorted(files)]


def file_size(path: DataPath) -> int:
    """Size in bytes of a local file or a remote object."""
    if not is_url(path):
        return Path(path).stat().st_size
    fs, inner = url_filesystem(str(path))
    return int(fs.size(inner))


def open_binary(path: DataPath) -> BinaryIO:
    """A seekable binary reader of a local file or a remote object (fsspec's buffered remote file)."""
    if not is_url(path):
        return open(path, "rb")
    fs, inner = url_filesystem(str(path))
    return fs.open(inner, "rb")


def read_many(paths: Sequence[str]) -> dict[str, bytes | None]:
    """The bytes of many small files (None for those that do not exist); remote ones fetched concurrently."""
    out: dict[str, bytes | None] = {}
    remote: dict[int, tuple] = {}
    for path in paths:
        if not is_url(path):
            out[path] = Path(path).read_bytes() if Path(path).is_file() else None
            continue
        fs, inner = url_filesystem(path)
        remote.setdefault(id(fs), (fs, []))[1].append((path, inner))
    for fs, items in remote.values():
        got = fs.cat([inner for _, inner in items], on_error="return")
        for path, inner in items:
            value = got.get(inner)
            out[path] = value if isinstance(value, bytes) else None
    return out
