"""Annotation files: checked readers (errors name file and line) and converters from what users hold.

Readers (used by every fine-tuning dataset): :func:`read_jsonl`, :func:`read_json`, :func:`record_key`.

Converters (``python3 -m dataset.convert SUBCOMMAND ...``), writing the retrieval json that
:mod:`dataset.retrieval` reads (train: one entry per caption ``{"caption", "image", "image_id"}``; val/test: one entry
per image ``{"image", "caption": [...], "image_id"}``; ``image`` relative to the ``images/`` root):

* ``karpathy``: Karpathy's ``dataset_coco.json`` / ``dataset_flickr30k.json`` -> ``en.train.json`` (train + restval),
  ``en.valid.json``, ``en.5k_test.json`` and ``en.1k_test.json`` (the first 1000 test images) for COCO
  (images ``coco/<filepath>/<filename>``); ``flickr30k_{train,val,test}.json`` for Flickr30K
  (images ``flickr30k-images/<filename>``).
* ``multi30k``: Multi30K raw text (one caption per line, optionally ``.gz``; several files = several captions per
  image, e.g. task 2's ``train.1.de`` .. ``train.5.de``) plus its image split list -> one json file.
* ``wit``: joins IGLUE WIT jsonl files with the Kaggle WIT image-pixel files (tab-separated ``url<TAB>base64``, ``.csv``
  or ``.csv.gz``) -> the same jsonl with ``image_content`` added (CCLM's ``annotations-bs64``; also works for the
  ``annotations_machine-translate`` files, which the reference never joined).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

from utils.errors import UserError

PathLike = str | os.PathLike


class AnnotationError(UserError, ValueError):
    """An annotation file is missing, malformed, or has a record the loaders cannot use (message names file/line)."""


# ---------------------------------------------------------------------------------------------------- readers

def where(path: PathLike, line: int | str) -> str:
    """``file:line`` (or ``file [item]``) for error messages."""
    return f"{path}:{line}" if isinstance(line, int) else f"{path} [{line}]"


def _open_text(path: PathLike):
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
    with _open_text(path) as f:
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


# ---------------------------------------------------------------------------------------------------- Karpathy

def karpathy_image_path(image: dict, dataset: str) -> str:
    """Image path relative to the ``images/`` root for one Karpathy entry."""
    if dataset == "coco":
        return f"coco/{image['filepath']}/{image['filename']}"
    return f"flickr30k-images/{image['filename']}"


def karpathy_dataset(karpathy: dict) -> str:
    """The split file's ``dataset`` ('coco', 'flickr30k', ...); without one, 'coco' when its images carry a cocoid."""
    images = karpathy.get("images") or [{}]
    return karpathy.get("dataset", "coco" if isinstance(images[0], dict) and "cocoid" in images[0] else "flickr30k")


def karpathy_to_retrieval(karpathy: dict, source: PathLike = "<karpathy>") -> dict[str, list[dict]]:
    """Split a Karpathy json into our retrieval json lists: ``train`` (train + restval), ``val``, ``test``."""
    if not isinstance(karpathy, dict) or "images" not in karpathy:
        raise AnnotationError(f"{source}: not a Karpathy split file (no top-level 'images' list)")
    dataset = karpathy_dataset(karpathy)
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for i, image in enumerate(karpathy["images"]):
        at = where(source, f"images[{i}]")
        require(image, ("filename", "split", "sentences"), at)
        if dataset == "coco":
            require(image, ("filepath",), at)
        path = karpathy_image_path(image, dataset)
        image_id = image.get("cocoid", Path(image["filename"]).stem)
        sentences = image["sentences"]
        if not isinstance(sentences, list) or not all(isinstance(s, dict) for s in sentences):
            raise AnnotationError(f"{at}: 'sentences' must be a list of objects with a 'raw' caption (Karpathy's "
                                  f"format), got {sentences!r:.80}")
        captions = [s["raw"].strip() for s in sentences if isinstance(s.get("raw"), str) and s["raw"].strip()]
        if not captions:
            raise AnnotationError(f"{at}: image {image['filename']} has no non-empty caption")
        split = {"restval": "train"}.get(image["split"], image["split"])
        if split not in splits:
            raise AnnotationError(f"{at}: unknown split {image['split']!r}")
        if split == "train":
            splits["train"].extend({"caption": c, "image": path, "image_id": image_id} for c in captions)
        else:
            splits[split].append({"image": path, "caption": captions, "image_id": image_id})
    return splits


def convert_karpathy(karpathy_file: PathLike, out_dir: PathLike) -> list[Path]:
    """Write the retrieval json files of one Karpathy split file into ``out_dir``; return their paths."""
    karpathy = read_json(karpathy_file)
    splits = karpathy_to_retrieval(karpathy, karpathy_file)
    dataset = karpathy_dataset(karpathy)  # the same rule for the image paths and the file names
    if dataset == "coco":
        outputs = {"en.train.json": splits["train"], "en.valid.json": splits["val"],
                   "en.5k_test.json": splits["test"], "en.1k_test.json": splits["test"][:1000]}
    else:
        outputs = {f"{dataset}_{split}.json": entries for split, entries in splits.items()}
    return [_write_json(Path(out_dir) / name, entries) for name, entries in outputs.items()]


# ---------------------------------------------------------------------------------------------------- Multi30K

def _read_lines(path: PathLike) -> list[str]:
    with _open_text(path) as f:
        return [line.rstrip("\n").rstrip("\r") for line in f]


def multi30k_to_retrieval(image_list: PathLike, caption_files: list[PathLike], split: str) -> list[dict]:
    """Multi30K raw text (line i = caption of image i of ``image_list``) -> retrieval json entries for ``split``."""
    images = [line.strip() for line in _read_lines(image_list)]
    while images and not images[-1]:
        images.pop()
    columns = []
    for caption_file in caption_files:
        captions = _read_lines(caption_file)
        while len(captions) > len(images) and not captions[-1].strip():
            captions.pop()
        if len(captions) != len(images):
            raise AnnotationError(f"{caption_file}: {len(captions)} captions but {image_list} lists {len(images)} "
                                  "images; line i of each must describe the same image")
        for line_no, caption in enumerate(captions, start=1):
            if not caption.strip():
                raise AnnotationError(f"{caption_file}:{line_no}: empty caption")
        columns.append([c.strip() for c in captions])
    entries = []
    for i, name in enumerate(images):
        if not name:
            raise AnnotationError(f"{image_list}:{i + 1}: empty image name")
        path, image_id = f"flickr30k-images/{name}", Path(name).stem
        captions = [column[i] for column in columns]
        if split == "train":
            entries.extend({"caption": c, "image": path, "image_id": image_id} for c in captions)
        else:
            entries.append({"image": path, "caption": captions, "image_id": image_id})
    return entries


# ---------------------------------------------------------------------------------------------------- WIT

def _iter_pixel_lines(pixel_files: list[Path]) -> Iterator[tuple[str, str]]:
    for pixel_file in pixel_files:
        with _open_text(pixel_file) as f:
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
    wanted = set()
    for path in annotation_files:
        for line_no, record in iter_jsonl(path):
            at = where(path, line_no)
            require(record, ("image_url", "caption_reference_description"), at)
            wanted.add(string_field(record, "image_url", at))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spool_path = out_dir / f".wit-pixels-{os.getpid()}.tmp"
    try:
        with open(spool_path, "w+b") as spool:
            found = _spool_pixels(wanted, [Path(p) for p in pixel_files], spool)
            return {path.name: _write_joined(path, out_dir / path.name, found, spool) for path in annotation_files}
    finally:
        spool_path.unlink(missing_ok=True)


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


def _write_joined(path: Path, out: Path, found: dict[str, tuple[int, int]], spool) -> tuple[int, int]:
    """Write ``path``'s records that have pixels, with ``image_content``, to ``out`` (atomically); (written, missing)."""
    written = missing = 0
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for _, record in iter_jsonl(path):
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


# ---------------------------------------------------------------------------------------------------- CLI

def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _write_json(path: Path, entries: list[dict]) -> Path:
    return _write_text(path, json.dumps(entries, ensure_ascii=False))


def _expand(paths: list[str], suffixes: tuple[str, ...]) -> list[Path]:
    """Files named directly, plus the matching files inside named directories (sorted)."""
    files = []
    for p in map(Path, paths):
        files.extend(sorted(f for f in p.iterdir() if f.name.endswith(suffixes)) if p.is_dir() else [p])
    return files


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python3 -m dataset.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    k = sub.add_parser("karpathy", help="Karpathy dataset_coco.json / dataset_flickr30k.json -> retrieval json")
    k.add_argument("karpathy_file")
    k.add_argument("--out-dir", required=True)
    m = sub.add_parser("multi30k", help="Multi30K raw text + image list -> retrieval json")
    m.add_argument("--image-list", required=True, help="e.g. task1/image_splits/train.txt")
    m.add_argument("--captions", nargs="+", required=True, help="e.g. task1/raw/train.de.gz (several = several captions)")
    m.add_argument("--split", required=True, choices=("train", "val", "test"))
    m.add_argument("--out", required=True, help="e.g. data/finetune/multi30k/train.de.json")
    w = sub.add_parser("wit", help="IGLUE WIT jsonl + Kaggle pixel csv -> jsonl with image_content")
    w.add_argument("--annotations", nargs="+", required=True, help="jsonl files or directories of them")
    w.add_argument("--pixels", nargs="+", required=True, help="pixel .csv/.csv.gz files or directories of them")
    w.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "karpathy":
            for path in convert_karpathy(args.karpathy_file, args.out_dir):
                print(f"wrote {path}")
        elif args.command == "multi30k":
            entries = multi30k_to_retrieval(args.image_list, args.captions, args.split)
            print(f"wrote {_write_json(Path(args.out), entries)} ({len(entries)} entries)")
        else:
            summary = join_wit_images(_expand(args.annotations, (".jsonl",)),
                                      _expand(args.pixels, (".csv", ".csv.gz")), args.out_dir)
            for name, (written, missing) in summary.items():
                print(f"{name}: {written} records written, {missing} without an image in the pixel files")
    except AnnotationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
