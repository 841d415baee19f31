"""NLVR2 / MaRVL: a statement about a pair of images, true or false.

Items are ``(left image, right image, statement str, label int)``: the statement is cleaned with
``pre_caption(., 30)`` and left as a string for the task script to tokenise; label 1 = true, 0 = false. Labels may be
JSON booleans (MaRVL) or the strings ``"True"``/``"False"`` (NLVR2); anything else is an error naming file and line.
Each image gets the transform independently (the reference flips them independently too,
docs/data-formats.md#nlvr-independent-flips).

Readable files:

* json list ``[{"sentence", "label", "images": [left, right]}]`` (the X-VLM NLVR2 files and the MaRVL files made by
  ``python3 -m dataset.marvl``), image paths relative to the given image root;
* NLVR2 jsonl as distributed (``nlvr2/data/*.json``, IGLUE ``nlvr2/annotations/*.jsonl``): image files derived from
  ``identifier`` as NLVR2 names them: ``dev-850-0-0`` -> ``dev/dev-850-0-img0.png`` and ``...-img1.png``;
  train images sit in ``train/<directory>/``.

Expected layout (relative to the data root)::

    data/finetune/nlvr_en/nlvr_{train,dev,test}.json    or  iglue/datasets/nlvr2/annotations/{train,dev,test}.jsonl
    images/nlvr2/{train/<directory>,dev,test1}/<split>-<set>-<pair>-img{0,1}.png
    data/marvl/marvl-<l>.json, marvl-<l>_train10x2.json   made by python3 -m dataset.marvl (image root: images/)
    images/marvl-images/<l>/images/<concept>/<file>,  images/marvl_fewshot/<l>/all/<file>
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from dataset.checked import (AnnotationError, ImageRoot, RecordReader, file_name_field, require, string_field,
                             where)
from dataset.examples import ExampleDataset
from dataset.images import load_image
from dataset.text import pre_caption

PathLike = str | os.PathLike
LABEL_VALUES = {True: 1, False: 0, "True": 1, "False": 0}


@dataclass(frozen=True)
class NLVRExample:
    """One statement with its two image files, label id and source line."""

    left: str
    right: str
    sentence: str
    label: int
    at: str


def parse_label(value: object, at: str) -> int:
    """1 for true, 0 for false; accepts JSON booleans (MaRVL) and "True"/"False" strings (NLVR2)."""
    if isinstance(value, (bool, str)) and value in LABEL_VALUES:
        return LABEL_VALUES[value]
    raise AnnotationError(f"{at}: label {value!r} is neither a boolean nor 'True'/'False'")


def _example(left: str, right: str, sentence: object, label: object, at: str, max_words: int) -> NLVRExample:
    if not isinstance(sentence, str):
        raise AnnotationError(f"{at}: sentence must be a string")
    try:
        cleaned = pre_caption(sentence, max_words)
    except ValueError as e:
        raise AnnotationError(f"{at}: sentence {sentence!r} is empty after cleaning ({e})") from e
    return NLVRExample(left, right, cleaned, parse_label(label, at), at)


def converted_from(entry: dict, at: str, reader: RecordReader) -> str:
    """Where to report a record: the IGLUE file and line a converted MaRVL entry names in ``source`` (its file then
    counts as the file read), else ``at``."""
    source = entry.get("source")
    if source is None:
        return at
    if not (isinstance(source, list) and len(source) == 2 and isinstance(source[0], str)
            and isinstance(source[1], int)):
        raise AnnotationError(f"{at}: 'source' must be [file, line], got {source!r:.80}")
    reader.stand_for(source[0])
    return where(*source)


def read_nlvr_json(path: PathLike, image_root: PathLike, max_words: int = 30) -> list[NLVRExample]:
    """A json list of ``{"sentence", "label", "images": [left, right]}`` (converted MaRVL entries also carry their
    IGLUE ``source`` line, and ``error`` for a line the conversion could not use)."""
    examples, root = [], ImageRoot(image_root)
    with RecordReader(path) as reader:
        for at, entry in reader.json_objects():
            at = converted_from(entry, at, reader)
            with reader.record(at):
                if "error" in entry:
                    raise AnnotationError(f"{at}: {entry['error']}")
                require(entry, ("sentence", "label", "images"), at)
                images = entry["images"]
                if not isinstance(images, list) or len(images) != 2:
                    raise AnnotationError(f"{at}: 'images' must be a list of two paths, got {images!r:.80}")
                left, right = (root.resolve(image, at, reader.skipping) for image in images)
                examples.append(_example(left, right, entry["sentence"], entry["label"], at, max_words))
    return examples


def nlvr2_image_files(identifier: str, directory: object = None) -> tuple[str, str]:
    """NLVR2's image files for a statement ``identifier`` (``<split>-<set>-<pair>-<sentence>``), relative to its root."""
    parts = identifier.split("-")
    if len(parts) != 4:
        raise ValueError(f"NLVR2 identifier {identifier!r} is not <split>-<set>-<pair>-<sentence>")
    prefix, split = "-".join(parts[:3]), parts[0]
    folder = f"{split}/{directory}" if directory is not None else split
    return f"{folder}/{prefix}-img0.png", f"{folder}/{prefix}-img1.png"


def read_nlvr2_jsonl(path: PathLike, image_root: PathLike, max_words: int = 30) -> list[NLVRExample]:
    """NLVR2 jsonl as distributed (``identifier``, ``sentence``, string ``label``; train lines add ``directory``)."""
    examples, root = [], ImageRoot(image_root)
    with RecordReader(path) as reader:
        for at, record in reader.jsonl(required=("identifier", "sentence", "label")):
            with reader.record(at):
                directory = record.get("directory")
                if directory is not None:
                    directory = file_name_field(directory, at, "directory")
                try:
                    files = nlvr2_image_files(string_field(record, "identifier", at), directory)
                except ValueError as e:
                    raise AnnotationError(f"{at}: {e}") from e
                left, right = (root.resolve(file, at, reader.skipping) for file in files)
                examples.append(_example(left, right, record["sentence"], record["label"], at, max_words))
    return examples


def read_nlvr_examples(path: PathLike, image_root: PathLike, max_words: int = 30) -> list[NLVRExample]:
    """Examples of a ``.json`` list file or an NLVR2 ``.jsonl`` file (chosen by suffix)."""
    if Path(path).suffix == ".jsonl":
        return read_nlvr2_jsonl(path, image_root, max_words)
    return read_nlvr_json(path, image_root, max_words)


class NLVRDataset(ExampleDataset):
    """Two-image statements: items ``(left image tensor, right image tensor, statement str, label int)``."""

    def __init__(self, path: PathLike, image_root: PathLike, transform: Callable, max_words: int = 30):
        super().__init__(path, read_nlvr_examples(path, image_root, max_words), transform, "no examples")

    def item(self, ex: NLVRExample):
        left = self.transform(load_image(ex.left, where=ex.at))
        right = self.transform(load_image(ex.right, where=ex.at))
        return left, right, ex.sentence, ex.label


def collate_nlvr(batch):
    """``(left images [B,3,H,W], right images [B,3,H,W], statements list[str], labels LongTensor [B])``."""
    lefts, rights, sentences, labels = zip(*batch)
    return torch.stack(lefts), torch.stack(rights), list(sentences), torch.tensor(labels, dtype=torch.long)
