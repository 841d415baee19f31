"""Streaming writers for the on-disk serialisations the real data uses, and the shared helpers of the world writer.

- ``JsonlWriter``: one ``json.dumps(record, ensure_ascii=False)`` per line, final newline (IGLUE jsonl files).
- ``PhpJsonlWriter``: compact separators, escaped slashes, no final newline (IGLUE ``wit/annotations/val_en.jsonl``).
- ``JsonListWriter`` / ``JsonDictWriter``: a JSON list or dict written item by item, byte-identical to
  ``json.dumps(whole, indent=...)`` with no final newline (GQA/xGQA files; retrieval json files).
- ``ShardedJsonl`` / ``ShardedTar``: records spread round-robin over jsonl shards or webdataset tar shards.
- ``ImagePlacer``: writes an image once and hard-links (or copies) it to every other path that refers to it.
- ``Corpus``: a bounded, seeded sample of the training text for the tokenizer.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path


class _Writer:
    def __init__(self, root: Path, rel: str):
        self.rel = rel
        self.path = root / rel
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "w", encoding="utf-8", newline="\n")
        self.count = 0

    def close(self) -> None:
        self.handle.close()


class JsonlWriter(_Writer):
    """JSON lines, UTF-8 text kept raw, a newline after every record."""

    def write(self, record: dict) -> None:
        self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.count += 1


class PhpJsonlWriter(_Writer):
    """JSON lines as PHP writes them (``{"a":"b\\/c"}``), without a final newline."""

    def write(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).replace("/", "\\/")
        self.handle.write(("\n" if self.count else "") + line)
        self.count += 1


class JsonListWriter(_Writer):
    """A JSON list streamed item by item; equals ``json.dumps(items, indent=indent, ensure_ascii=...)``."""

    def __init__(self, root: Path, rel: str, indent: int | None = None, ensure_ascii: bool = True):
        super().__init__(root, rel)
        self.indent, self.ensure_ascii = indent, ensure_ascii
        self.handle.write("[")

    def write(self, item) -> None:
        text = json.dumps(item, indent=self.indent, ensure_ascii=self.ensure_ascii)
        if self.indent is None:
            self.handle.write((", " if self.count else "") + text)
        else:
            pad = " " * self.indent
            self.handle.write(("," if self.count else "") + "\n" + pad + text.replace("\n", "\n" + pad))
        self.count += 1

    def close(self) -> None:
        self.handle.write("\n]" if self.indent is not None and self.count else "]")
        super().close()


class JsonDictWriter(_Writer):
    """A one-line JSON dict streamed entry by entry; equals ``json.dumps(mapping)`` (keys in insertion order)."""

    def __init__(self, root: Path, rel: str):
        super().__init__(root, rel)
        self.handle.write("{")

    def write(self, key: str, value) -> None:
        self.handle.write((", " if self.count else "") + json.dumps(key) + ": " + json.dumps(value))
        self.count += 1

    def close(self) -> None:
        self.handle.write("}")
        super().close()


class ShardedJsonl:
    """Records spread round-robin over ``shards`` jsonl files ``<folder>/part-0000k.jsonl``."""

    def __init__(self, root: Path, folder: str, shards: int):
        self.writers = [JsonlWriter(root, f"{folder}/part-{k:05d}.jsonl") for k in range(shards)]
        self.count = 0

    def write(self, record: dict) -> None:
        self.writers[self.count % len(self.writers)].write(record)
        self.count += 1

    def close(self) -> None:
        for w in self.writers:
            w.close()

    @property
    def rels(self) -> list[str]:
        return [w.rel for w in self.writers]


class ShardedTar:
    """Samples spread round-robin over ``shards`` webdataset tar files ``<folder>/part-0000k.tar`` (the split of
    ShardedJsonl), keys numbered in write order, each shard with its ``part-0000k_stats.json`` count (dataset.tars)."""

    def __init__(self, root: Path, folder: str, shards: int):
        from webdataset import TarWriter

        self.root, self.folder = root, folder
        (root / folder).mkdir(parents=True, exist_ok=True)
        self.paths = [root / folder / f"part-{k:05d}.tar" for k in range(shards)]
        self.writers = [TarWriter(str(path), mtime=0) for path in self.paths]  # a fixed time: identical bytes
        self.counts = [0] * shards
        self.count = 0

    def write(self, members: dict) -> None:
        """One sample: ``{extension: bytes, str or dict (json)}``."""
        k = self.count % len(self.writers)
        self.writers[k].write({"__key__": f"{self.count:09d}", **members})
        self.counts[k] += 1
        self.count += 1

    def close(self) -> None:
        from dataset.tars import write_stats_file

        for writer, path, count in zip(self.writers, self.paths, self.counts):
            writer.close()
            write_stats_file(path, count)

    @property
    def rels(self) -> list[str]:
        from dataset.tars import stats_path

        return [Path(p).relative_to(self.root).as_posix() for path in self.paths for p in (path, stats_path(path))]


class ImagePlacer:
    """Writes each distinct image once; every further path holding the same bytes is a hard link (or a copy)."""

    def __init__(self, root: Path):
        self.root = root
        self.first: dict[tuple, Path] = {}

    def put(self, key: tuple, rel: str, data: bytes) -> str:
        """Place the image identified by ``key`` (e.g. (scene, "jpg")) at ``rel``; returns ``rel``."""
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        source = self.first.get(key)
        if source is None:
            target.write_bytes(data)
            self.first[key] = target
        elif not target.exists():
            try:
                os.link(source, target)
            except OSError:  # file systems without hard links
                shutil.copyfile(source, target)
        return rel


class Corpus:
    """A reservoir sample (seeded, so deterministic) of at most ``capacity`` training texts."""

    def __init__(self, seed: int, capacity: int):
        self.rng = random.Random(f"cclm-synthetic:{seed}:corpus")
        self.capacity = capacity
        self.texts: list[str] = []
        self.seen = 0

    def add(self, text: str) -> None:
        self.seen += 1
        if len(self.texts) < self.capacity:
            self.texts.append(text)
            return
        k = self.rng.randrange(self.seen)
        if k < self.capacity:
            self.texts[k] = text
