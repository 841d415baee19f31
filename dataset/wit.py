"""WIT's pixel join: IGLUE's WIT annotations + the Kaggle image-pixel files -> jsonl with base64 ``image_content``.

:func:`join_wit_images` adds ``image_content`` (base64) to IGLUE WIT jsonl records from the Kaggle pixel files
(tab-separated ``url<TAB>base64...``, ``.csv`` or ``.csv.gz``), matched by ``image_url``; records whose image is in no
pixel file are left out. :func:`prepare_wit` does it before a WIT run, as the reference's ``wit_preproc``, for every
annotation file of the config's ``wit_preproc`` block that has no joined counterpart yet
(``python3 -m dataset.convert wit`` is the same join from the command line).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import Iterator

from dataset.checked import (PathLike, RecordReader, jsonl_lines, open_text, parse_jsonl_record,
                             string_field, where)
from utils.config import ConfigError

WIT_KEYS = ("image_url", "caption_reference_description")  # every WIT line has these (a null caption is empty)

logger = logging.getLogger(__name__)

PIXEL_SUFFIXES = (".csv", ".csv.gz")


def _pixel_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"wit_preproc: pixel folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.name.endswith(PIXEL_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"wit_preproc: no {' or '.join(PIXEL_SUFFIXES)} file in {folder}")
    return files


def _pending_annotation_files(folder: Path, out_dir: Path, scratch: Path) -> list[Path]:
    """The ``*.jsonl`` files of the IGLUE folder (or only shipped as ``*.jsonl.zip``: extracted to ``scratch``) that
    have no counterpart in ``out_dir`` yet."""
    if not folder.is_dir():
        raise FileNotFoundError(f"wit_preproc: annotation folder {folder} does not exist")
    plain = sorted(folder.glob("*.jsonl"))
    have = {p.name for p in plain}
    files = [p for p in plain if not (out_dir / p.name).exists()]
    for archive in sorted(folder.glob("*.jsonl.zip")):
        name = archive.name[:-len(".zip")]
        if name in have or (out_dir / name).exists():
            continue
        with zipfile.ZipFile(archive) as zf:
            member = next((m for m in zf.namelist() if Path(m).name == name), None)
            if member is None:
                raise FileNotFoundError(f"wit_preproc: {archive} holds no {name}")
            scratch.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(scratch / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        files.append(scratch / name)
    return files


WIT_PREPROC_KEYS = {"annotations", "train_pixels", "test_pixels", "out_dir"}
WIT_PREPROC_GMT_KEYS = {"gmt_annotations", "gmt_out_dir"}


def prepare_wit(config: dict, root: Path) -> None:
    """Join every IGLUE WIT annotation file without a base64 counterpart in ``wit_preproc.out_dir`` (rank 0 only);
    with ``--gmt`` also the machine-translated test files (``gmt_annotations`` -> ``gmt_out_dir``)."""
    block = config.get("wit_preproc")
    if not block:
        return
    missing, unknown = WIT_PREPROC_KEYS - set(block), set(block) - WIT_PREPROC_KEYS - WIT_PREPROC_GMT_KEYS
    if missing or unknown:
        raise ConfigError(f"config 'wit_preproc' needs {sorted(WIT_PREPROC_KEYS)} (and optionally "
                          f"{sorted(WIT_PREPROC_GMT_KEYS)}); missing {sorted(missing)}, unknown {sorted(unknown)}")
    folders = [(block["annotations"], block["out_dir"])]
    if config.get("gmt"):
        if not WIT_PREPROC_GMT_KEYS <= set(block):
            raise ConfigError(f"--gmt: config 'wit_preproc' needs {sorted(WIT_PREPROC_GMT_KEYS)} to make the "
                              "translate-test files")
        folders.append((block["gmt_annotations"], block["gmt_out_dir"]))
    for folder, out in folders:
        _join_missing(root / str(folder), root / str(out), root / str(block["train_pixels"]),
                      root / str(block["test_pixels"]))


def _join_missing(annotations: Path, out_dir: Path, train_pixels: Path, test_pixels: Path) -> None:
    """Join the annotation files of ``annotations`` that ``out_dir`` lacks with their pixels (test files: test pixels)."""
    scratch = out_dir / f".tmp-{os.getpid()}"  # private: files appear in out_dir only when complete
    pending = _pending_annotation_files(annotations, out_dir, scratch)
    for group, pixels in (("test", test_pixels), ("train", train_pixels)):
        files = [p for p in pending if ("test" in p.name) == (group == "test")]
        if not files:
            continue
        logger.info("wit_preproc: joining %s with the pixels in %s (once; other ranks wait up to "
                    "run.dist_timeout_minutes)", ", ".join(p.name for p in files), pixels)
        summary = join_wit_images(files, _pixel_files(pixels), scratch / "joined")
        for name, (written, dropped) in summary.items():
            os.replace(scratch / "joined" / name, out_dir / name)
            logger.info("wit_preproc: %s: %d records, %d without an image dropped", name, written, dropped)
    shutil.rmtree(scratch, ignore_errors=True)


def _iter_pixel_lines(pixel_files: list[Path]) -> Iterator[tuple[str, str]]:
    for pixel_file in pixel_files:
        with open_text(pixel_file) as f:
            for line in f:
                url, sep, rest = line.rstrip("\n").partition("\t")
                if sep:
                    yield url, rest.split("\t", 1)[0]


def join_wit_images(annotation_files: list[PathLike], pixel_files: list[PathLike], out_dir: PathLike) -> dict:
    """Add ``image_content`` (base64) from the Kaggle pixel files to WIT annotation jsonl files, matched by ``image_url``.

    Writes ``out_dir/<annotation file name>`` for each input, keeping line order; records whose image is not in any
    pixel file are left out. Returns ``{file name: (written, missing)}``. Memory stays small whatever the data size:
    the matched pixels are spooled to a scratch file in ``out_dir`` (removed at the end) and only their offsets are
    kept.
    """
    annotation_files = [Path(p) for p in annotation_files]
    wanted, usable = set(), {}
    for path in annotation_files:
        usable[path] = _usable_lines(path, wanted)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spool_path = out_dir / f".wit-pixels-{os.getpid()}.tmp"
    try:
        with open(spool_path, "w+b") as spool:
            found = _spool_pixels(wanted, [Path(p) for p in pixel_files], spool)
            return {path.name: _write_joined(path, usable[path], out_dir / path.name, found, spool)
                    for path in annotation_files}
    finally:
        spool_path.unlink(missing_ok=True)


def _usable_lines(path: Path, wanted: set) -> set[int]:
    """The byte offsets of ``path``'s usable lines (a bad one raises, or with skip_bad_samples is counted and left
    out); their image URLs are added to ``wanted``."""
    offsets = set()
    with RecordReader(path) as reader:
        for at, offset, record in reader.jsonl(with_offsets=True, required=WIT_KEYS):
            with reader.record(at):
                wanted.add(string_field(record, "image_url", at))
                offsets.add(offset)
    return offsets


def _spool_pixels(wanted: set, pixel_files: list[Path], spool) -> dict[str, tuple[int, int]]:
    """Append the first pixels of each wanted URL to ``spool``; ``{url: (offset, length)}``."""
    found: dict[str, tuple[int, int]] = {}
    for url, pixels in _iter_pixel_lines(pixel_files):
        if url in wanted and url not in found:
            data = pixels.encode("utf-8")
            found[url] = (spool.tell(), len(data))
            spool.write(data)
            if len(found) == len(wanted):
                break
    return found


def _write_joined(path: Path, usable: set[int], out: Path, found: dict[str, tuple[int, int]],
                  spool) -> tuple[int, int]:
    """Write ``path``'s usable records (by byte offset) that have pixels, with ``image_content``, to ``out``
    (atomically); (written, missing)."""
    written = missing = 0
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for line_no, offset, raw in jsonl_lines(path):
            if offset not in usable:
                continue
            record = parse_jsonl_record(raw, where(path, line_no))
            location = found.get(record["image_url"])
            if location is None:
                missing += 1
                continue
            spool.seek(location[0])
            record = dict(record, image_content=spool.read(location[1]).decode("utf-8"))
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += 1
    os.replace(tmp, out)
    return written, missing
