"""MaRVL preprocessing: IGLUE's MaRVL jsonl files -> the json lists :class:`dataset.nlvr.NLVRDataset` reads.

``python3 -m dataset.marvl --marvl-dir iglue/datasets/marvl --out-dir data/marvl`` converts every
``zero_shot/annotations/*.jsonl``, ``zero_shot/annotations_machine-translate/*.jsonl`` (translate-test) and
``few_shot/annotations/*.jsonl`` into ``<out-dir>/<same name>.json``: a list of
``{"source": [IGLUE file, line], "sentence": caption, "label": bool, "images": [left, right], "id", "language",
"concept"}`` with image paths relative to the ``images/`` root. A line that cannot be converted becomes
``{"source", "error"}``: the reader reports it at its IGLUE file and line (or, with ``skip_bad_samples``, counts it
against that file and leaves it out), so every error names the line the user must fix:

* zero-shot files name a bare file (``39-0.jpg``): ``marvl-images/<language>/images/<concept>/<file>``;
* few-shot files name ``<concept>/<file>``: ``marvl_fewshot/<language>/all/<file>``.

Only missing or outdated outputs are rewritten (:func:`ensure_marvl`), each atomically, so an interrupted run is
completed next time (the reference skipped preprocessing whenever the output folder existed).

Expected layout (relative to the data root)::

    iglue/datasets/marvl/zero_shot/annotations/marvl-<l>.jsonl                      l = id sw ta tr zh
    iglue/datasets/marvl/zero_shot/annotations_machine-translate/marvl-<l>_gmt.jsonl
    iglue/datasets/marvl/few_shot/annotations/marvl-<l>_train{1,2,4,10,10x2}.jsonl  l = id tr zh
    images/marvl-images/<l>/images/<concept>/<file>       images/marvl_fewshot/<l>/all/<file>
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dataset.checked import (AnnotationError, file_name_field, jsonl_lines, parse_jsonl_record, require,
                             where)
from dataset.nlvr import parse_label

PathLike = str | os.PathLike
SOURCES = (("zero_shot/annotations", False), ("zero_shot/annotations_machine-translate", False),
           ("few_shot/annotations", True))
# (marker file in the output folder, form): outputs of another form are converted again
CONVERTED_FORM = (".converted-form", "2: entries carry their IGLUE source line")


def _file_name(value: object, at: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise AnnotationError(f"{at}: {key} must be a non-empty string, got {value!r}")
    return file_name_field(value, at, key)


def marvl_image_paths(record: dict, few_shot: bool, at: str) -> list[str]:
    """The two image paths of a MaRVL record, relative to the ``images/`` root."""
    language = _file_name(record["language"], at, "language")
    paths = []
    for key in ("left_img", "right_img"):
        name = record[key]
        if few_shot:
            if not isinstance(name, str):
                raise AnnotationError(f"{at}: {key} must be a string, got {name!r}")
            paths.append(f"marvl_fewshot/{language}/all/{_file_name(Path(name).name, at, key)}")
        elif isinstance(name, str) and "/" in name:
            raise AnnotationError(f"{at}: zero-shot {key} {name!r} should be a bare file name (few-shot files "
                                  "carry concept/file); is this a few-shot file in a zero-shot folder?")
        else:
            concept = _file_name(record["concept"], at, "concept")
            paths.append(f"marvl-images/{language}/images/{concept}/{_file_name(name, at, key)}")
    return paths


def _converted_entry(record: dict, few_shot: bool, at: str) -> dict:
    require(record, ("caption", "label", "left_img", "right_img", "language") + (() if few_shot else ("concept",)),
            at)
    return {"sentence": record["caption"], "label": bool(parse_label(record["label"], at)),
            "images": marvl_image_paths(record, few_shot, at), "id": record.get("id"),
            "language": record["language"], "concept": record.get("concept")}


def convert_marvl_file(path: PathLike, few_shot: bool) -> list[dict]:
    """The NLVR-style entries of one MaRVL jsonl file, each with its IGLUE ``source`` [file, line]; a line that
    cannot be converted becomes ``{"source", "error"}``, which the reader reports (or skips) at that IGLUE line."""
    entries = []
    for line_no, _, raw in jsonl_lines(path):
        at = where(path, line_no)
        source = {"source": [str(path), line_no]}
        try:
            entries.append({**source, **_converted_entry(parse_jsonl_record(raw, at), few_shot, at)})
        except AnnotationError as e:
            entries.append({**source, "error": str(e).removeprefix(f"{at}: ")})
    return entries


def marvl_sources(marvl_dir: PathLike) -> list[tuple[Path, bool]]:
    """Every MaRVL annotation file under ``marvl_dir`` with whether it is a few-shot file."""
    marvl_dir = Path(marvl_dir)
    found = [(path, few_shot) for sub, few_shot in SOURCES if (marvl_dir / sub).is_dir()
             for path in sorted((marvl_dir / sub).glob("*.jsonl"))]
    if not found:
        raise AnnotationError(f"{marvl_dir}: no MaRVL annotation files under "
                              f"{', '.join(sub for sub, _ in SOURCES)}")
    return found


def _write_json(path: Path, entries: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def ensure_marvl(marvl_dir: PathLike, out_dir: PathLike, force: bool = False) -> list[Path]:
    """Convert the MaRVL files whose output is missing, older than its source or written in an older form (the
    marker file ``CONVERTED_FORM``); return every output path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = out_dir / CONVERTED_FORM[0]
    force = force or not marker.is_file() or marker.read_text(encoding="utf-8").strip() != CONVERTED_FORM[1]
    outputs = []
    for source, few_shot in marvl_sources(marvl_dir):
        target = out_dir / (source.stem + ".json")
        if force or not target.is_file() or target.stat().st_mtime < source.stat().st_mtime:
            _write_json(target, convert_marvl_file(source, few_shot))
        outputs.append(target)
    marker.write_text(CONVERTED_FORM[1] + "\n", encoding="utf-8")
    return outputs


def unconverted_records(outputs: list[Path]) -> list[str]:
    """``file:line: why`` of every IGLUE line the conversion could not use."""
    return [f"{where(*entry['source'])}: {entry['error']}" for path in outputs
            for entry in json.loads(path.read_text(encoding="utf-8")) if "error" in entry]


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python3 -m dataset.marvl", description=__doc__.split("\n\n")[0])
    parser.add_argument("--marvl-dir", required=True, help="IGLUE's datasets/marvl folder")
    parser.add_argument("--out-dir", required=True, help="where the json files go, e.g. data/marvl")
    parser.add_argument("--force", action="store_true", help="rewrite every output")
    args = parser.parse_args(argv)
    try:
        outputs = ensure_marvl(args.marvl_dir, args.out_dir, args.force)
    except AnnotationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{len(outputs)} MaRVL files ready in {args.out_dir}")
    bad = unconverted_records(outputs)
    if bad:
        print(f"{len(bad)} record(s) could not be converted; a run stops at the first (or, with skip_bad_samples, "
              "leaves them out):\n  " + "\n  ".join(bad[:10]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
