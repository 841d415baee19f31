"""Converters from the annotation files users hold (``python3 -m dataset.convert SUBCOMMAND ...``), writing the
retrieval json that :mod:`dataset.retrieval` reads (train: one entry per caption ``{"caption", "image",
"image_id"}``; val/test: one entry per image ``{"image", "caption": [...], "image_id"}``; ``image`` relative to the
``images/`` root; docs/data-formats.md#retrieval-json):

* ``karpathy``: Karpathy's ``dataset_coco.json`` / ``dataset_flickr30k.json`` -> ``en.train.json`` (train + restval),
  ``en.valid.json``, ``en.5k_test.json`` and ``en.1k_test.json`` (the first 1000 test images) for COCO
  (images ``coco/<filepath>/<filename>``); ``flickr30k_{train,val,test}.json`` for Flickr30K
  (images ``flickr30k-images/<filename>``).
* ``multi30k``: Multi30K raw text (one caption per line, optionally ``.gz``; several files = several captions per
  image, e.g. task 2's ``train.1.de`` .. ``train.5.de``) plus its image split list -> one json file.
* ``wit``: joins IGLUE WIT jsonl files with the Kaggle WIT image-pixel files (tab-separated ``url<TAB>base64``, ``.csv``
  or ``.csv.gz``) -> the same jsonl with ``image_content`` added (CCLM's ``annotations-bs64``; also works for the
  ``annotations_machine-translate`` files, which the reference never joined; the join itself is :mod:`dataset.wit`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dataset.checked import AnnotationError, PathLike, open_text, read_json, require, where
from dataset.wit import join_wit_images


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
    with open_text(path) as f:
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
