"""Image-text retrieval datasets: Multi30K / MSCOCO json, xFlickr&CO (and Flickr30K) jsonl, WIT jsonl.

Text is returned as cleaned strings (``pre_caption``); the task script tokenises (its tokenizer, padding and
truncation differ per task, docs/data-formats.md#text-handling-per-task). Captions are cleaned when the file is
read, so a bad caption fails early with its file and line. Images are opened lazily in ``__getitem__``; a missing
image raises an error naming the image file and the annotation file/line that refers to it.

Training items are ``(image, caption, idx)`` where ``idx`` is the dense index of the caption's image (captions of the
same image, in any language, share it: they are positives for ITC and never ITM negatives). Evaluation datasets hold
one image per item, ``(image, image_index)``, and expose ``texts``, ``images``, ``img2txt``, ``txt2img`` for
:func:`models.ranking.retrieval_metrics` (the two-stage evaluator's recall); one evaluation dataset per language
(:func:`load_retrieval_eval` returns ``{language: dataset}``).

Expected layout (relative to the data root, the reference's working directory):

Multi30K (format ``caption_json``, max_words 30; images relative to ``images/``)::

    data/finetune/multi30k/train.<l>.json             [{"caption", "image": "flickr30k-images/<id>.jpg", "image_id"}]
    data/finetune/multi30k/{val,test_2016_flickr}.<l>.json   [{"image", "caption": [...], "image_id"}]   l = en de fr cs
    images/flickr30k-images/<id>.jpg

MSCOCO (format ``caption_json``; ``python3 -m dataset.convert karpathy`` makes the English files)::

    data/finetune/mscoco/{en,ja}.{train,valid,1k_test}.json, zh.{train,val,test}.json   (images "coco/val2014/...")
    images/coco/{train2014,val2014}/*.jpg

xFlickr&CO (format ``xflickrco``, max_words 80; ``{"sentences": [...], "id", "img_path"}`` per line; an image is
taken from the COCO root when its path contains ``COCO``, else from the Flickr30K root)::

    iglue/datasets/flickr30k/annotations/{train_ann,valid_ann}.jsonl          English train / val (5 captions each)
    iglue/datasets/xFlickrCO/annotations/<l>/test.jsonl                       l = de en es id ja ru tr zh
    iglue/datasets/xFlickrCO/annotations/<l>/train_<N>.jsonl                  few-shot
    iglue/datasets/xFlickrCO/annotations_machine-translate/<l>/test_gmt.jsonl translate-test
    images/flickr30k-images/<id>.jpg,  images/val2014/COCO_val2014_<id>.jpg

WIT (format ``wit``, max_words 80; IGLUE records, several captions per image grouped by ``image_url``). The image is
the record's base64 ``image_content`` when present (``python3 -m dataset.convert wit`` adds it from the Kaggle pixel
files, as CCLM's preprocessing did), else the file ``<image_root>/<last segment of image_url, URL-decoded>``::

    data/wit/annotations-bs64/{train_en,val_en,test_<l>}.jsonl    l = ar bg da el en et id ja ko tr vi
    data/wit/annotations_machine-translate-bs64/test_<l>_gmt.jsonl
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import unquote, urlparse

import torch
from torch.utils.data import Dataset

from dataset.checked import (AnnotationError, ImageRoot, RecordReader, record_key, string_field,
                             string_list)
from dataset.images import load_image
from dataset.text import pre_caption
from dataset.wit import WIT_KEYS

PathLike = str | os.PathLike
FORMATS = ("caption_json", "xflickrco", "wit")
MAX_WORDS = {"caption_json": 30, "xflickrco": 80, "wit": 80}


@dataclass(frozen=True)
class ImageRef:
    """Where an image comes from: a file, or the base64 ``image_content`` of the jsonl line at ``offset`` in ``path``."""

    path: str
    at: str  # the annotation file:line that refers to it, for error messages
    offset: int | None = None

    def load(self):
        """The PIL RGB image."""
        if self.offset is None:
            return load_image(self.path, where=self.at)
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            record = json.loads(f.readline())
        if "image_content" not in record:
            raise AnnotationError(f"{self.at}: the line no longer has 'image_content' (was {self.path} rewritten?)")
        return load_image(record["image_content"], base64=True, where=self.at)

    def __str__(self) -> str:
        return self.path if self.offset is None else f"{self.at} (base64 image_content)"


@dataclass(frozen=True)
class CaptionPair:
    """One training caption with its image and the key that identifies the image across files."""

    image: ImageRef
    caption: str
    image_key: object


@dataclass
class RetrievalEvalData:
    """Images, texts and the ground truth of an evaluation file."""

    images: list[ImageRef] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    img2txt: list[list[int]] = field(default_factory=list)
    txt2img: list[int] = field(default_factory=list)
    skipped: int = 0  # lines dropped by the format's rules (all-empty xFlickr&CO lines, empty WIT captions)

    def add_image(self, image: ImageRef, captions: list[str]) -> None:
        """Append an image with its captions."""
        index = len(self.images)
        self.images.append(image)
        self.img2txt.append(list(range(len(self.texts), len(self.texts) + len(captions))))
        self.texts.extend(captions)
        self.txt2img.extend([index] * len(captions))


def clean_caption(text: object, max_words: int, at: str) -> str:
    """``pre_caption`` with the error naming the annotation file and line."""
    if not isinstance(text, str):
        raise AnnotationError(f"{at}: caption must be a string, got {type(text).__name__}")
    try:
        return pre_caption(text, max_words)
    except ValueError as e:
        raise AnnotationError(f"{at}: caption {text!r} is empty after cleaning ({e})") from e


def _train_captions(value: object, at: str) -> list:
    """A training entry's ``caption``: one string (the format's), or a list of strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise AnnotationError(f"{at}: 'caption' must be a string or a non-empty list of strings, got {value!r:.60}")


# ---------------------------------------------------------------------------------------------------- Multi30K / COCO

def read_caption_json_train(path: PathLike, image_root: PathLike, max_words: int = 30) -> list[CaptionPair]:
    """Multi30K/COCO training json: one entry per caption."""
    pairs, root = [], ImageRoot(image_root)
    with RecordReader(path) as reader:
        for at, entry in reader.json_objects(required=("caption", "image", "image_id")):
            with reader.record(at):
                image = ImageRef(root.resolve(entry["image"], at, reader.skipping), at)
                key = record_key(entry["image_id"], at)
                captions = [clean_caption(c, max_words, at) for c in _train_captions(entry["caption"], at)]
                pairs.extend(CaptionPair(image, caption, key) for caption in captions)
    return pairs


def read_caption_json_eval(path: PathLike, image_root: PathLike, max_words: int = 30) -> RetrievalEvalData:
    """Multi30K/COCO val/test json: one entry per image with its caption list."""
    data, root = RetrievalEvalData(), ImageRoot(image_root)
    with RecordReader(path) as reader:
        for at, entry in reader.json_objects(required=("caption", "image")):
            with reader.record(at):
                captions = [clean_caption(c, max_words, at) for c in string_list(entry, "caption", at)]
                data.add_image(ImageRef(root.resolve(entry["image"], at, reader.skipping), at), captions)
    return data


# ---------------------------------------------------------------------------------------------------- xFlickr&CO

def flickrco_image_path(img_path: str, flickr_root: ImageRoot, coco_root: ImageRoot | None, at: str,
                        must_exist: bool = False) -> str:
    """xFlickr&CO images live under two roots: COCO val2014 files (``COCO`` in the name) and Flickr30K files."""
    if "COCO" in img_path:
        if coco_root is None:
            raise AnnotationError(f"{at}: {img_path} is a COCO image but no COCO image root was given")
        return coco_root.resolve(img_path, at, must_exist)
    return flickr_root.resolve(img_path, at, must_exist)


def _flickrco_roots(flickr_root: PathLike, coco_root: PathLike | None) -> tuple[ImageRoot, ImageRoot | None]:
    return ImageRoot(flickr_root), None if coco_root is None else ImageRoot(coco_root)


def read_flickrco_train(path: PathLike, flickr_root: PathLike, coco_root: PathLike | None = None,
                        max_words: int = 80) -> list[CaptionPair]:
    """xFlickr&CO / Flickr30K jsonl for training: one pair per sentence; the image key is the record's ``id``."""
    pairs, roots = [], _flickrco_roots(flickr_root, coco_root)
    with RecordReader(path) as reader:
        for at, record in reader.jsonl(required=("sentences", "id", "img_path")):
            with reader.record(at):
                image = ImageRef(flickrco_image_path(string_field(record, "img_path", at), *roots, at,
                                                     reader.skipping), at)
                key = record_key(record["id"], at)
                captions = [clean_caption(s, max_words, at) for s in string_list(record, "sentences", at)]
                pairs.extend(CaptionPair(image, caption, key) for caption in captions)
    return pairs


def read_flickrco_eval(path: PathLike, flickr_root: PathLike, coco_root: PathLike | None = None,
                       max_words: int = 80) -> RetrievalEvalData:
    """xFlickr&CO / Flickr30K jsonl for evaluation: one image per line; lines whose sentences are all empty are skipped."""
    data, roots = RetrievalEvalData(), _flickrco_roots(flickr_root, coco_root)
    with RecordReader(path) as reader:
        for at, record in reader.jsonl(required=("sentences", "id", "img_path")):
            with reader.record(at):
                record_key(record["id"], at)
                sentences = record["sentences"]
                if not isinstance(sentences, list) or not all(s is None or isinstance(s, str) for s in sentences):
                    raise AnnotationError(f"{at}: 'sentences' must be a list of strings, got {sentences!r:.60}")
                if all(s is None or not s.strip() for s in sentences):
                    data.skipped += 1
                    continue
                captions = [clean_caption(s, max_words, at) for s in sentences]
                image = flickrco_image_path(string_field(record, "img_path", at), *roots, at, reader.skipping)
                data.add_image(ImageRef(image, at), captions)
    return data


# ---------------------------------------------------------------------------------------------------- WIT

def wit_image_file_name(image_url: str) -> str:
    """The file name an image URL is stored under when images are files: its last path segment, URL-decoded."""
    name = unquote(Path(urlparse(image_url).path).name)
    if not name:
        raise ValueError(f"image URL {image_url!r} has no file name")
    return name


def _wit_image(record: dict, path: PathLike, at: str, offset: int, root: ImageRoot | None, must_exist: bool):
    if "image_content" in record:
        string_field(record, "image_content", at)
        return ImageRef(str(path), at, offset)
    if root is None:
        raise AnnotationError(f"{at}: no 'image_content' and no image root given; join the Kaggle pixels first "
                              "(python3 -m dataset.convert wit) or pass image_root")
    try:
        name = wit_image_file_name(record["image_url"])
    except ValueError as e:
        raise AnnotationError(f"{at}: {e}") from None
    return ImageRef(root.resolve(name, at, must_exist), at)


def _wit_records(path: PathLike, image_root: PathLike | None) -> list[tuple[str, ImageRef, str, str]]:
    """``(at, ImageRef, image_url, caption)`` per WIT line (a null caption is empty)."""
    records, root = [], None if image_root is None else ImageRoot(image_root)
    with RecordReader(path) as reader:
        for at, offset, record in reader.jsonl(with_offsets=True, required=WIT_KEYS):
            with reader.record(at):
                caption = record["caption_reference_description"]
                if caption is None:  # pandas exports write a missing caption as null: an empty caption, dropped
                    caption = ""
                if not isinstance(caption, str):
                    raise AnnotationError(f"{at}: caption_reference_description must be a string or null, "
                                          f"got {type(caption).__name__}")
                url = string_field(record, "image_url", at)
                records.append((at, _wit_image(record, path, at, offset, root, reader.skipping), url, caption))
    return records


def clean_wit_caption(caption: str, max_words: int) -> str:
    """``pre_caption``, keeping the stripped raw text when cleaning leaves nothing (e.g. a caption of ``.``)."""
    try:
        return pre_caption(caption, max_words)
    except ValueError:
        # The reference keeps the raw string here in training; in evaluation it crashed on anything but ".".
        return caption.strip()


def read_wit_train(path: PathLike, image_root: PathLike | None = None, max_words: int = 80) -> list[CaptionPair]:
    """WIT jsonl for training: one pair per non-empty caption; the image key is ``image_url``."""
    return [CaptionPair(image, clean_wit_caption(caption, max_words), url)
            for _, image, url, caption in _wit_records(path, image_root) if caption.strip()]


def read_wit_eval(path: PathLike, image_root: PathLike | None = None, max_words: int = 80) -> RetrievalEvalData:
    """WIT jsonl for evaluation: images grouped by ``image_url`` in first-seen order, each with all its captions."""
    groups: dict[str, tuple[ImageRef, list[str]]] = {}
    skipped = 0
    for _, image, url, caption in _wit_records(path, image_root):
        if not caption.strip():
            skipped += 1
            continue
        groups.setdefault(url, (image, []))[1].append(clean_wit_caption(caption, max_words))
    data = RetrievalEvalData(skipped=skipped)
    for image, captions in groups.values():
        data.add_image(image, captions)
    return data


# ---------------------------------------------------------------------------------------------------- datasets

@dataclass(frozen=True)
class ImageRoots:
    """Image roots of the retrieval formats: ``images`` for caption_json (paths in the json are relative to it),
    ``flickr30k`` and ``coco`` for xFlickr&CO, ``wit`` (optional) for WIT images stored as files."""

    images: PathLike | None = None
    flickr30k: PathLike | None = None
    coco: PathLike | None = None
    wit: PathLike | None = None


def _root(roots: ImageRoots, name: str, fmt: str) -> PathLike:
    value = getattr(roots, name)
    if value is None:
        raise ValueError(f"retrieval format {fmt!r} needs the {name!r} image root")
    return value


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown retrieval format {fmt!r}; expected one of {FORMATS}")


# format -> (training reader, evaluation reader); both take (path, *image roots, max_words)
READERS = {"caption_json": (read_caption_json_train, read_caption_json_eval),
           "xflickrco": (read_flickrco_train, read_flickrco_eval),
           "wit": (read_wit_train, read_wit_eval)}


def _read(fmt: str, path: PathLike, roots: ImageRoots, max_words: int | None, train: bool):
    _check_format(fmt)
    if fmt == "caption_json":
        image_roots = (_root(roots, "images", fmt),)
    elif fmt == "xflickrco":
        image_roots = (_root(roots, "flickr30k", fmt), roots.coco)
    else:
        image_roots = (roots.wit,)
    reader = READERS[fmt][0 if train else 1]
    return reader(path, *image_roots, max_words or MAX_WORDS[fmt])


def read_train_pairs(fmt: str, path: PathLike, roots: ImageRoots, max_words: int | None = None) -> list[CaptionPair]:
    """Training pairs of one file in format ``fmt``."""
    return _read(fmt, path, roots, max_words, train=True)


def read_eval_data(fmt: str, path: PathLike, roots: ImageRoots, max_words: int | None = None) -> RetrievalEvalData:
    """Evaluation data of one file in format ``fmt``."""
    return _read(fmt, path, roots, max_words, train=False)


class RetrievalTrainDataset(Dataset):
    """Caption-level training set: items ``(image tensor, caption str, image idx)``.

    ``idx`` is the dense index of the image key in first-seen order over all pairs, so pairs from several files
    (e.g. the languages of Multi30K) that name the same image share it.
    """

    def __init__(self, pairs: list[CaptionPair], transform: Callable):
        if not pairs:
            raise ValueError("RetrievalTrainDataset: no caption pairs")
        self.pairs, self.transform = pairs, transform
        self.key_to_idx: dict[object, int] = {}
        for pair in pairs:
            self.key_to_idx.setdefault(pair.image_key, len(self.key_to_idx))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        pair = self.pairs[index]
        return self.transform(pair.image.load()), pair.caption, self.key_to_idx[pair.image_key]


class RetrievalEvalDataset(Dataset):
    """One language's evaluation set: items ``(image tensor, image index)``; ``texts`` are tokenised by the caller."""

    def __init__(self, data: RetrievalEvalData, transform: Callable, language: str = ""):
        if not data.images:
            raise ValueError(f"RetrievalEvalDataset {language!r}: no images")
        self.data, self.transform, self.language = data, transform, language
        self.texts, self.img2txt, self.txt2img = data.texts, data.img2txt, data.txt2img
        self.images = [str(image) for image in data.images]

    def __len__(self) -> int:
        return len(self.data.images)

    def __getitem__(self, index: int):
        return self.transform(self.data.images[index].load()), index


def limit_images(pairs: list[CaptionPair], max_images: int) -> list[CaptionPair]:
    """The pairs of the first ``max_images`` distinct images (in file order): few-shot subsets of a training file."""
    kept: set = set()
    out = []
    for pair in pairs:
        if pair.image_key not in kept:
            if len(kept) == max_images:
                continue
            kept.add(pair.image_key)
        out.append(pair)
    return out


def load_retrieval_train(fmt: str, files: list[PathLike] | PathLike, transform: Callable, roots: ImageRoots,
                         max_words: int | None = None, max_images: int | None = None) -> RetrievalTrainDataset:
    """The training set of one or more files (concatenated in order) of format ``fmt``."""
    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    pairs = [pair for path in files for pair in read_train_pairs(fmt, path, roots, max_words)]
    if max_images is not None:
        pairs = limit_images(pairs, max_images)
    return RetrievalTrainDataset(pairs, transform)


def load_retrieval_eval(fmt: str, files: Mapping[str, PathLike], transform: Callable, roots: ImageRoots,
                        max_words: int | None = None) -> dict[str, RetrievalEvalDataset]:
    """``{language: evaluation dataset}`` for ``{language: file}``."""
    return {lang: RetrievalEvalDataset(read_eval_data(fmt, path, roots, max_words), transform, lang)
            for lang, path in files.items()}


def collate_retrieval_train(batch):
    """``(images [B,3,H,W], captions list[str], idx LongTensor [B])``."""
    images, captions, idx = zip(*batch)
    return torch.stack(images), list(captions), torch.tensor(idx, dtype=torch.long)


def collate_retrieval_eval(batch):
    """``(images [B,3,H,W], image indices LongTensor [B])``."""
    images, indices = zip(*batch)
    return torch.stack(images), torch.tensor(indices, dtype=torch.long)
