"""Pieces shared by the pre-training record readers: caption choice, text encoding (clean, tokenise, mask, pad),
record images, and the collate of per-sample dicts."""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dataset.checked import ImageRoot
from dataset.images import load_image
from dataset.masking import TextMasker
from dataset.shards import BadRecordError, LineRef
from dataset.text import pad_ids, pre_caption, tokenize_to_ids

TEXT_KEYS = ("text_ids", "text_atts", "text_ids_masked", "masked_pos", "masked_ids")


def require(record: dict, key: str, where) -> Any:
    """``record[key]`` or a BadRecordError naming the missing key."""
    if key not in record:
        raise BadRecordError(f"missing key {key!r} (the record has {sorted(record)})", where)
    return record[key]


def choose_captions(value, where, rng: random.Random, n: int = 1, language_chosen=None,
                    what: str = "caption") -> list[tuple[str | None, str]]:
    """``n`` (language, text) pairs in distinct languages from a caption value.

    The value is a dict language -> text, a list of such dicts (one is drawn first), or, with n=1, a plain string
    (language None) or a list of strings. With ``language_chosen`` the languages are drawn from those only, and the
    dict must hold all of them.
    """
    if isinstance(value, list):
        if not value:
            raise BadRecordError(f"the {what} list is empty", where)
        value = value[rng.randrange(len(value))]
    if isinstance(value, str):
        if n > 1:
            raise BadRecordError(f"{n} {what} languages are needed but the {what} is a plain string", where)
        return [(None, value)]
    if not isinstance(value, dict):
        raise BadRecordError(f"the {what} must be a dict language -> text, got {type(value).__name__}", where)
    languages = list(value)
    if language_chosen:
        missing = [lang for lang in language_chosen if lang not in value]
        if missing:
            raise BadRecordError(f"missing {what} language(s) {missing} (the {what} has {languages})", where)
        languages = list(language_chosen)
    if len(languages) < n:
        raise BadRecordError(f"{n} {what} languages are needed, the {what} has {languages}", where)
    picked = rng.sample(languages, n)
    for lang in picked:
        if not isinstance(value[lang], str):
            raise BadRecordError(f"the {what} in {lang!r} is not a string: {value[lang]!r}", where)
    return [(lang, value[lang]) for lang in picked]


@dataclass
class TextSpec:
    """How a caption becomes the five model inputs: clean, tokenise, mask, pad to ``max_tokens``."""

    tokenizer: Any
    max_words: int
    max_tokens: int
    masker: TextMasker
    pretokenized: bool = False

    def clean(self, text: str, where) -> str:
        """The cleaned caption (BadRecordError when it is empty)."""
        if self.pretokenized:
            if not isinstance(text, str) or not text.strip():
                raise BadRecordError("empty text", where)
            return text.strip()
        try:
            return pre_caption(text, self.max_words)
        except ValueError as exc:
            raise BadRecordError(f"empty text after cleaning ({text!r}): {exc}", where) from None

    def encode_clean(self, text: str, rng: random.Random, where, suffix: str = "") -> dict[str, list[int]]:
        """Model inputs of an already cleaned text, keys suffixed with ``suffix``."""
        try:
            ids = tokenize_to_ids(self.tokenizer, text, self.max_tokens, self.pretokenized)
        except ValueError as exc:
            raise BadRecordError(f"cannot tokenise {text!r}: {exc}", where) from None
        masked, masked_pos, masked_ids = self.masker(ids, rng)
        pad = self.tokenizer.pad_token_id
        text_ids, text_atts = pad_ids(ids, self.max_tokens, pad)
        text_ids_masked, _ = pad_ids(masked, self.max_tokens, pad)
        values = (text_ids, text_atts, text_ids_masked, masked_pos, masked_ids)
        return {key + suffix: value for key, value in zip(TEXT_KEYS, values)}

    def encode(self, text: str, rng: random.Random, where, suffix: str = "") -> dict[str, list[int]]:
        """Model inputs of a raw text."""
        return self.encode_clean(self.clean(text, where), rng, where, suffix)


@functools.lru_cache(maxsize=64)
def _image_root(root: str) -> ImageRoot:
    return ImageRoot(root, remember=False)  # shards name millions of images: no per-name memory


def read_record_image(record: dict, image_key: str, is_path: bool, ref: LineRef, image_root=None):
    """The record's image: base64 data, the encoded bytes of a tar member, or a path inside ``image_root`` (default:
    the jsonl's folder), relative to it or absolute; a path that leaves the root is a bad record, refused before
    anything is opened."""
    value = require(record, image_key, ref)
    if isinstance(value, bytes):  # a tar shard's image member (dataset.tars)
        return load_image(value, where=ref)
    if not is_path:
        return load_image(value, base64=True, where=ref)
    if not isinstance(value, str) or not value:
        raise BadRecordError(f"{image_key!r} must be an image path, got {value!r}", ref)
    return load_image(_image_root(str(image_root or Path(ref.path).parent)).resolve(value, ref), where=ref)


def collate_samples(samples: list[dict], rng: random.Random | None = None) -> dict:
    """Stack tensors, turn lists of ints into LongTensors; keys of the first sample."""
    batch = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = torch.tensor(values, dtype=torch.long)
    return batch
