"""Convert what users hold into pre-training shards (jsonl files of ``--shard-size`` records, ``part-00000.jsonl`` ...).

* ``python3 -m dataset.prepare images --images DIR --captions FILE.csv|FILE.json|FILE.jsonl --out OUT
  --shard-size N``: a captions table with an image column (``--image-column``, default ``image``, a path relative to
  DIR) and one column per language (every other column, or ``--languages en,de``) -> image-text records
  ``{"binary": base64 of the image file, "caption": {lang: text}}``. Rows naming the same image become one record
  whose caption is a list of dicts. Empty cells are left out; a row without any caption is an error. CSV needs a
  header row; JSON is a list of objects, JSONL one object per line.
* ``python3 -m dataset.prepare parallel --tsv FILE --src-lang en --tgt-lang de --out OUT --shard-size N``: lines
  ``source<TAB>target`` (``--header`` skips a first line) -> ``{"source_text", "target_text", "source_lang",
  "target_lang"}`` (the reader uses only the two texts).

Every image is checked to decode; every bad row stops the conversion with ``file:line`` in the message. OUT must not
hold shards already (``--overwrite`` replaces them). The shards go to the ``train_file`` / ``train_file_text`` lists
of a pre-training config.
"""
from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Iterator

from PIL import Image, UnidentifiedImageError


class PrepareError(ValueError):
    """Bad input to a conversion (the message names file and line)."""


# ------------------------------------------------------------------------------------------------- writing

class ShardWriter:
    """Writes records as jsonl shards of ``shard_size`` lines, each file renamed into place when complete."""

    def __init__(self, out_dir: Path, shard_size: int, prefix: str = "part"):
        if shard_size < 1:
            raise PrepareError(f"--shard-size must be positive, got {shard_size}")
        self.out_dir, self.shard_size, self.prefix = out_dir, shard_size, prefix
        self.paths: list[Path] = []
        self._buffer: list[str] = []

    def add(self, record: dict) -> None:
        self._buffer.append(json.dumps(record, ensure_ascii=False))
        if len(self._buffer) == self.shard_size:
            self._flush()

    def close(self) -> list[Path]:
        if self._buffer:
            self._flush()
        return self.paths

    def _flush(self) -> None:
        path = self.out_dir / f"{self.prefix}-{len(self.paths):05d}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("\n".join(self._buffer) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        self.paths.append(path)
        self._buffer = []


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Create ``out``; refuse (or with ``overwrite`` remove) shards already there."""
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob("*.jsonl"))
    if existing and not overwrite:
        raise PrepareError(f"{out} already holds {len(existing)} .jsonl files (use --overwrite to replace them)")
    for path in existing:
        path.unlink()


# ------------------------------------------------------------------------------------------------- images

def read_caption_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row dict) of a captions CSV (header row), JSON (list of objects) or JSONL file."""
    if not path.is_file():
        raise PrepareError(f"{path}: captions file not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for row in reader:
                yield reader.line_num, row
    elif suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise PrepareError(f"{path}:{number}: malformed JSON line ({exc})") from None
                    yield number, row
    elif suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise PrepareError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
        if not isinstance(rows, list):
            raise PrepareError(f"{path}: expected a JSON list of objects")
        for index, row in enumerate(rows):
            yield index, row
    else:
        raise PrepareError(f"{path}: captions must be .csv, .json or .jsonl")


def _row_where(path: Path, number: int) -> str:
    return f"{path} [item {number}]" if path.suffix.lower() == ".json" else f"{path}:{number}"


def caption_dict(row: dict, image_column: str, languages: list[str] | None, where: str) -> dict[str, str]:
    """language -> caption of one row (empty cells left out)."""
    if not isinstance(row, dict):
        raise PrepareError(f"{where}: expected an object with {image_column!r} and language columns")
    columns = languages or [key for key in row if key != image_column]
    missing = [lang for lang in columns if lang not in row]
    if languages and missing:
        raise PrepareError(f"{where}: missing language column(s) {missing}")
    captions = {}
    for lang in columns:
        value = row.get(lang)
        if value is None:
            continue
        if not isinstance(value, str):
            raise PrepareError(f"{where}: the {lang!r} caption must be text, got {value!r}")
        if value.strip():
            captions[lang] = value.strip()
    if not captions:
        raise PrepareError(f"{where}: no caption in any language")
    return captions


def encode_image_file(path: Path, where: str) -> str:
    """Base64 of the image file's bytes, after checking that it decodes."""
    if not path.is_file():
        raise PrepareError(f"{where}: image file not found: {path}")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise PrepareError(f"{where}: cannot decode the image {path} ({exc})") from None
    return base64.b64encode(data).decode("ascii")


def group_rows_by_image(path: Path, image_column: str, languages: list[str] | None) -> dict[str, tuple[str, list]]:
    """image value -> (where of its first row, [caption dicts]) in order of first appearance."""
    grouped: dict[str, tuple[str, list]] = {}
    for number, row in read_caption_rows(path):
        where = _row_where(path, number)
        captions = caption_dict(row, image_column, languages, where)
        image = row.get(image_column)
        if not isinstance(image, str) or not image.strip():
            raise PrepareError(f"{where}: missing {image_column!r} value")
        grouped.setdefault(image.strip(), (where, []))[1].append(captions)
    if not grouped:
        raise PrepareError(f"{path}: no caption row")
    return grouped


def prepare_images(images: Path, captions: Path, out: Path, shard_size: int, image_column: str = "image",
                   languages: list[str] | None = None, overwrite: bool = False) -> list[Path]:
    """Write image-text shards (nothing is left behind on a bad row); return their paths."""
    if not images.is_dir():
        raise PrepareError(f"{images}: image folder not found")
    grouped = group_rows_by_image(captions, image_column, languages)
    prepare_out_dir(out, overwrite)
    writer = ShardWriter(out, shard_size)
    try:
        for image, (where, caption_list) in grouped.items():
            data = encode_image_file(images / image, where)
            writer.add({"binary": data, "caption": caption_list[0] if len(caption_list) == 1 else caption_list})
        return writer.close()
    except PrepareError:
        for path in writer.paths:
            path.unlink()
        raise


# ------------------------------------------------------------------------------------------------- parallel text

def read_tsv_pairs(path: Path, header: bool) -> Iterator[tuple[str, str]]:
    """(source, target) of every non-empty line of a two-column TSV."""
    if not path.is_file():
        raise PrepareError(f"{path}: TSV file not found")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if header and number == 1:
                continue
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            columns = line.split("\t")
            if len(columns) != 2:
                raise PrepareError(f"{path}:{number}: expected 2 tab-separated columns, got {len(columns)}")
            source, target = (c.strip() for c in columns)
            if not source or not target:
                raise PrepareError(f"{path}:{number}: empty {'source' if not source else 'target'} text")
            yield source, target


def prepare_parallel(tsv: Path, src_lang: str, tgt_lang: str, out: Path, shard_size: int, header: bool = False,
                     overwrite: bool = False) -> list[Path]:
    """Write parallel-text shards (streaming; nothing is left behind on a bad line); return their paths."""
    if not tsv.is_file():
        raise PrepareError(f"{tsv}: TSV file not found")
    prepare_out_dir(out, overwrite)
    writer = ShardWriter(out, shard_size)
    try:
        for source, target in read_tsv_pairs(tsv, header):
            writer.add({"source_text": source, "target_text": target, "source_lang": src_lang,
                        "target_lang": tgt_lang})
        paths = writer.close()
    except PrepareError:
        for path in writer.paths:
            path.unlink()
        raise
    if not paths:
        raise PrepareError(f"{tsv}: no sentence pair")
    return paths


# ------------------------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m dataset.prepare", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    images = commands.add_parser("images", help="image folder + captions table -> image-text shards")
    images.add_argument("--images", type=Path, required=True, help="folder the image column is relative to")
    images.add_argument("--captions", type=Path, required=True, help="captions .csv (header), .json or .jsonl")
    images.add_argument("--image-column", default="image")
    images.add_argument("--languages", default=None, help="comma-separated caption columns (default: all others)")
    parallel = commands.add_parser("parallel", help="source<TAB>target lines -> parallel-text shards")
    parallel.add_argument("--tsv", type=Path, required=True)
    parallel.add_argument("--src-lang", required=True)
    parallel.add_argument("--tgt-lang", required=True)
    parallel.add_argument("--header", action="store_true", help="the first line is a header")
    for sub in (images, parallel):
        sub.add_argument("--out", type=Path, required=True, help="output folder of the shards")
        sub.add_argument("--shard-size", type=int, default=10000, help="records per shard file")
        sub.add_argument("--overwrite", action="store_true", help="replace .jsonl files already in --out")
    return parser


def main(argv: list[str] | None = None) -> list[Path]:
    """Run the CLI; return the shard paths written."""
    args = build_parser().parse_args(argv)
    if args.command == "images":
        languages = [lang.strip() for lang in args.languages.split(",") if lang.strip()] if args.languages else None
        paths = prepare_images(args.images, args.captions, args.out, args.shard_size, args.image_column, languages,
                               args.overwrite)
    else:
        paths = prepare_parallel(args.tsv, args.src_lang, args.tgt_lang, args.out, args.shard_size, args.header,
                                 args.overwrite)
    print(f"wrote {len(paths)} shard(s) to {args.out}")
    return paths


if __name__ == "__main__":
    try:
        main()
    except PrepareError as error:
        sys.exit(f"error: {error}")
