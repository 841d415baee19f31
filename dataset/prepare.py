"""Convert what users hold into pre-training shards: jsonl files (``part-00000.jsonl`` ...) or webdataset tar shards
(``part-00000.tar`` + ``part-00000_stats.json`` ..., dataset.tars), of ``--shard-size`` samples each.

* ``python3 -m dataset.prepare images --images DIR --captions FILE.csv|FILE.json|FILE.jsonl --out OUT
  --shard-size N``: a captions table with an image column (``--image-column``, default ``image``, a path relative to
  DIR) and one column per language (every other column, or ``--languages en,de``) -> image-text records
  ``{"binary": base64 of the image file, "caption": {lang: text}}``. Rows naming the same image become one record
  whose caption is a list of dicts. Empty cells are left out; a row without any caption is an error. CSV needs a
  header row; JSON is a list of objects, JSONL one object per line. ``--format tar`` writes tar shards instead:
  ``<key>.jpg`` (the image file's bytes, under its format's extension) + ``<key>.json`` ``{"caption": ...}``.
* ``python3 -m dataset.prepare tars --jsonl PATH... --out OUT --shard-size N``: our image jsonl shards (image-text,
  regions, monolingual; files or folders) -> tar shards: the base64 image (``--image-key``, default ``binary``)
  becomes the image member, every other field the json member, so the same config blocks read them.
* ``python3 -m dataset.prepare stats SHARD...``: write the missing ``<name>_stats.json`` sample counts of tar shards
  made by other tools (local or remote URLs, brace patterns; ``--overwrite`` recounts existing ones).
* ``python3 -m dataset.prepare parallel --tsv FILE --src-lang en --tgt-lang de --out OUT --shard-size N``: lines
  ``source<TAB>target`` (``--header`` skips a first line) -> ``{"source_text", "target_text", "source_lang",
  "target_lang"}`` (the reader uses only the two texts).

Every image is checked to decode; every bad row stops the conversion with ``file:line`` in the message. OUT must not
hold shards already (``--overwrite`` replaces them); it may be an fsspec URL (``s3://bucket/shards``): each finished
shard is then uploaded atomically (utils.remote) and removed locally. The shards go to the ``train_file`` /
``train_file_regions`` / ``train_file_text`` lists of a pre-training config.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import csv
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from PIL import Image, UnidentifiedImageError

from dataset.shards import list_jsonl_files
from dataset.sources import list_data_files
from dataset.tars import TAR_SUFFIXES, TarShardWriter, count_samples, stats_json, stats_path, write_stats_file
from utils.remote import is_url, upload_atomic, url_filesystem


class PrepareError(ValueError):
    """Bad input to a conversion (the message names file and line)."""


# ------------------------------------------------------------------------------------------------- writing

class ShardWriter:
    """Writes records as jsonl shards of ``shard_size`` lines, each file renamed into place when complete;
    ``on_shard(path)`` is called after each."""

    def __init__(self, out_dir: Path, shard_size: int, prefix: str = "part", on_shard=None):
        if shard_size < 1:
            raise PrepareError(f"--shard-size must be positive, got {shard_size}")
        self.out_dir, self.shard_size, self.prefix, self.on_shard = out_dir, shard_size, prefix, on_shard
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
        if self.on_shard is not None:
            self.on_shard(path)


SUFFIX = {"jsonl": ".jsonl", "tar": ".tar"}


class ShardOutput:
    """Where the shards go: a local folder, or a URL (each finished shard is uploaded from a scratch folder, then
    removed locally). ``format`` is ``jsonl`` (base64 images) or ``tar`` (image members + json).

    Used as ``with ShardOutput(...) as output:``: a normal exit finishes the last shard (``output.written`` lists
    the shards), any exception removes everything written, so a bad row leaves no partial conversion behind.
    """

    def __init__(self, out: str, format: str, shard_size: int, overwrite: bool):
        if format not in SUFFIX:
            raise PrepareError(f"--format must be one of {sorted(SUFFIX)}, got {format!r}")
        self.out, self.format, self.written = str(out), format, []
        self.remote = url_filesystem(self.out) if is_url(self.out) else None
        if self.remote is None:
            self.local = Path(out)
            remove_existing_shards(self.local, SUFFIX[format], overwrite)
        else:
            self.local = Path(tempfile.mkdtemp(prefix="prepare-"))
            remove_existing_remote_shards(*self.remote, self.out, SUFFIX[format], overwrite)
        self.writer = (TarShardWriter(self.local, shard_size, on_shard=self._finished) if format == "tar"
                       else ShardWriter(self.local, shard_size, on_shard=self._finished))

    def _finished(self, *paths: Path) -> None:
        if self.remote is None:
            self.written.append(str(paths[0]))
            return
        fs, root = self.remote
        for path in paths:
            upload_atomic(fs, path, f"{root.rstrip('/')}/{path.name}")
            path.unlink()
        self.written.append(f"{self.out.rstrip('/')}/{paths[0].name}")

    def add_image(self, image: bytes, fields: dict, where: str) -> None:
        """One image sample: the encoded image bytes and its other fields (caption, elems, ...)."""
        if self.format == "jsonl":
            self.writer.add({"binary": base64.b64encode(image).decode("ascii"), **fields})
        else:
            image, ext = tar_image_member(image, where)
            self.writer.add({ext: image, "json": fields})

    def add_record(self, record: dict) -> None:
        self.writer.add(record)

    def __enter__(self) -> "ShardOutput":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self.close()  # uploads the last shard: it can still fail
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
        return False

    def shards(self, nothing: str) -> list[str]:
        """The shards written; a PrepareError with the message ``nothing`` when there is none."""
        if not self.written:
            raise PrepareError(nothing)
        return self.written

    def close(self) -> list[str]:
        """Finish the last shard; the shards written (paths or URLs)."""
        self.writer.close()
        if self.remote is not None:
            self.local.rmdir()
        return self.written

    def abort(self) -> None:
        """Remove what was written (a bad row stops the conversion without leaving part of it behind)."""
        for name in self.written:
            if self.remote is None:
                Path(name).unlink(missing_ok=True)
                if self.format == "tar":
                    Path(stats_path(name)).unlink(missing_ok=True)
            else:
                fs, inner = url_filesystem(name)
                fs.rm_file(inner)
                if self.format == "tar":
                    fs.rm_file(url_filesystem(stats_path(name))[1])
        for leftover in self.local.glob("*"):
            if self.remote is not None or (leftover.name.startswith("part-") and leftover.name.endswith(".tmp")):
                leftover.unlink()
        if self.remote is not None:
            self.local.rmdir()


def remove_existing_shards(out: Path, suffix: str, overwrite: bool) -> None:
    """Create ``out``; refuse (or with ``overwrite`` remove) shards already there."""
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob(f"*{suffix}"))
    if existing and not overwrite:
        raise PrepareError(f"{out} already holds {len(existing)} {suffix} files (use --overwrite to replace them)")
    for path in existing:
        path.unlink()
        if suffix == ".tar":
            Path(stats_path(path)).unlink(missing_ok=True)


def remove_existing_remote_shards(fs, root: str, url: str, suffix: str, overwrite: bool) -> None:
    """The remote version of :func:`remove_existing_shards`."""
    existing = sorted(fs.glob(f"{root.rstrip('/')}/*{suffix}"))
    if existing and not overwrite:
        raise PrepareError(f"{url} already holds {len(existing)} {suffix} files (use --overwrite to replace them)")
    for path in existing:
        fs.rm_file(path)
        if suffix == ".tar" and fs.exists(stats_path(path)):
            fs.rm_file(stats_path(path))


TAR_IMAGE_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def checked_image(data: bytes, where: str) -> Image.Image:
    """The decoded image (PrepareError naming ``where`` when it does not decode)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise PrepareError(f"{where}: cannot decode the image ({exc})") from None


def tar_image_member(data: bytes, where: str) -> tuple[bytes, str]:
    """(bytes, extension) of an image member: JPEG/PNG/WebP as they are, other formats re-encoded as PNG."""
    image = checked_image(data, where)
    ext = TAR_IMAGE_FORMATS.get(image.format or "")
    if ext:
        return data, ext
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue(), "png"


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


def read_image_file(path: Path, where: str) -> bytes:
    """The image file's bytes, after checking that it decodes."""
    if not path.is_file():
        raise PrepareError(f"{where}: image file not found: {path}")
    data = path.read_bytes()
    checked_image(data, f"{where}: {path}")
    return data


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


def prepare_images(images: Path, captions: Path, out, shard_size: int, image_column: str = "image",
                   languages: list[str] | None = None, overwrite: bool = False, format: str = "jsonl") -> list[str]:
    """Write image-text shards (nothing is left behind on a bad row); return their paths (or URLs)."""
    if not images.is_dir():
        raise PrepareError(f"{images}: image folder not found")
    grouped = group_rows_by_image(captions, image_column, languages)
    with ShardOutput(out, format, shard_size, overwrite) as output:
        for image, (where, caption_list) in grouped.items():
            data = read_image_file(images / image, where)
            output.add_image(data, {"caption": caption_list[0] if len(caption_list) == 1 else caption_list}, where)
    return output.written


# ------------------------------------------------------------------------------------------------- jsonl -> tar

def iter_jsonl_records(paths) -> Iterator[tuple[str, dict]]:
    """(file:line, record) of every non-blank line of our jsonl shards (files, folders, URLs)."""
    from dataset.sources import open_binary

    for path in list_jsonl_files(paths):
        with open_binary(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise PrepareError(f"{where}: malformed JSON line ({exc})") from None
                if not isinstance(record, dict):
                    raise PrepareError(f"{where}: expected a JSON object")
                yield where, record


def prepare_tars_from_jsonl(jsonl, out, shard_size: int, image_key: str = "binary",
                            overwrite: bool = False) -> list[str]:
    """Rewrite image jsonl shards (base64 images) as tar shards: the image member + the other fields as json."""
    with ShardOutput(out, "tar", shard_size, overwrite) as output:
        for where, record in iter_jsonl_records(jsonl):
            value = record.pop(image_key, None)
            if not isinstance(value, str) or not value:
                raise PrepareError(f"{where}: no base64 image under {image_key!r} (image paths are not converted)")
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise PrepareError(f"{where}: invalid base64 image data ({exc})") from None
            output.add_image(data, record, where)
    return output.shards(f"{jsonl}: no record")


# ------------------------------------------------------------------------------------------------- stats

def write_shard_stats(shards, overwrite: bool = False) -> list[str]:
    """Write ``<name>_stats.json`` (the sample count) next to every tar shard lacking one; the files written."""
    written = []
    for shard in list_data_files(shards, TAR_SUFFIXES):
        target = stats_path(shard)
        fs, inner = url_filesystem(target) if is_url(target) else (None, target)
        if not overwrite and (fs.exists(inner) if fs else Path(target).exists()):
            continue
        count, error = count_samples(shard)
        if error:
            raise PrepareError(f"{shard}: unreadable tar after {count} samples ({error}); a count would hide the "
                               f"damage: repair or remove the shard")
        if fs is None:
            write_stats_file(Path(shard), count)
        else:
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                f.write(stats_json(count))
            try:
                upload_atomic(fs, f.name, inner)
            finally:
                os.unlink(f.name)
        written.append(target)
    return written


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


def prepare_parallel(tsv: Path, src_lang: str, tgt_lang: str, out, shard_size: int, header: bool = False,
                     overwrite: bool = False) -> list[str]:
    """Write parallel-text shards (streaming; nothing is left behind on a bad line); return their paths."""
    if not tsv.is_file():
        raise PrepareError(f"{tsv}: TSV file not found")
    with ShardOutput(out, "jsonl", shard_size, overwrite) as output:
        for source, target in read_tsv_pairs(tsv, header):
            output.add_record({"source_text": source, "target_text": target, "source_lang": src_lang,
                               "target_lang": tgt_lang})
    return output.shards(f"{tsv}: no sentence pair")


# ------------------------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m dataset.prepare", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    images = commands.add_parser("images", help="image folder + captions table -> image-text shards")
    images.add_argument("--images", type=Path, required=True, help="folder the image column is relative to")
    images.add_argument("--captions", type=Path, required=True, help="captions .csv (header), .json or .jsonl")
    images.add_argument("--image-column", default="image")
    images.add_argument("--languages", default=None, help="comma-separated caption columns (default: all others)")
    images.add_argument("--format", choices=sorted(SUFFIX), default="jsonl", help="jsonl (default) or tar shards")
    tars = commands.add_parser("tars", help="our image jsonl shards -> webdataset tar shards")
    tars.add_argument("--jsonl", nargs="+", required=True, help="jsonl files or folders (local or URLs)")
    tars.add_argument("--image-key", default="binary", help="the field holding the base64 image")
    parallel = commands.add_parser("parallel", help="source<TAB>target lines -> parallel-text shards")
    parallel.add_argument("--tsv", type=Path, required=True)
    parallel.add_argument("--src-lang", required=True)
    parallel.add_argument("--tgt-lang", required=True)
    parallel.add_argument("--header", action="store_true", help="the first line is a header")
    for sub in (images, tars, parallel):
        sub.add_argument("--out", required=True, help="output folder of the shards (or an fsspec URL)")
        sub.add_argument("--shard-size", type=int, default=10000, help="samples per shard file")
        sub.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    stats = commands.add_parser("stats", help="write the missing <name>_stats.json sample counts of tar shards")
    stats.add_argument("shards", nargs="+", help="tar files, folders or brace patterns (local or URLs)")
    stats.add_argument("--overwrite", action="store_true", help="recount shards that have a _stats.json")
    return parser


def main(argv: list[str] | None = None) -> list[str]:
    """Run the CLI; return the files written (shards, or _stats.json files)."""
    args = build_parser().parse_args(argv)
    if args.command == "stats":
        written = write_shard_stats(args.shards, args.overwrite)
        print(f"wrote {len(written)} _stats.json file(s)")
        return written
    if args.command == "images":
        languages = [lang.strip() for lang in args.languages.split(",") if lang.strip()] if args.languages else None
        paths = prepare_images(args.images, args.captions, args.out, args.shard_size, args.image_column, languages,
                               args.overwrite, args.format)
    elif args.command == "tars":
        paths = prepare_tars_from_jsonl(args.jsonl, args.out, args.shard_size, args.image_key, args.overwrite)
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
