"""XVNLI (visual entailment): IGLUE jsonl, one (image, hypothesis) pair per line, 3 labels.

Items are ``(image tensor, hypothesis str, label int)``: the hypothesis (``sentence2``) is cleaned with
``pre_caption(., 80)`` and left as a string for the task script to tokenise; the text premise ``sentence1`` is unused.
Labels: contradiction 0, entailment 1, neutral 2. Lines without a consensus label (``-``, IGLUE's marker, or empty)
are dropped and counted in ``dataset.dropped``; any other label is an error naming the line (the reference dropped
every unknown label, so a misspelt one silently shrank the data). The image key is spelled ``Flikr30kID`` (sic) in
the IGLUE files.

Expected layout (relative to the data root)::

    iglue/datasets/XVNLI/annotations/en/train.jsonl             (unzip IGLUE's train.jsonl.zip)
    iglue/datasets/XVNLI/annotations/en/dev.jsonl
    iglue/datasets/XVNLI/annotations/<l>/test.jsonl             l = ar en es fr ru
    iglue/datasets/XVNLI/annotations/<l>/train_<N>.jsonl        few-shot, N = 1 5 10 20 25 48
    iglue/datasets/XVNLI/annotations_machine-translate/<l>/test.jsonl   translate-test (no en)
    images/flickr30k-images/<Flikr30kID>.jpg
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from dataset.checked import AnnotationError, ImageRoot, RecordReader, file_name_field, string_field
from dataset.examples import ExampleDataset
from dataset.images import load_image
from dataset.text import pre_caption

PathLike = str | os.PathLike
LABELS = {"contradiction": 0, "entailment": 1, "neutral": 2}
NO_CONSENSUS = ("-", "")
IMAGE_KEY = "Flikr30kID"


@dataclass(frozen=True)
class XVNLIExample:
    """One scored pair: image file, cleaned hypothesis, label id, and the annotation line it came from."""

    image: str
    hypothesis: str
    label: int
    at: str


def read_xvnli(path: PathLike, image_root: PathLike, max_words: int = 80) -> tuple[list[XVNLIExample], int]:
    """``(examples, dropped)``: the usable lines of an XVNLI jsonl file and the number of lines without a gold label."""
    examples, dropped, root = [], 0, ImageRoot(image_root)
    with RecordReader(path) as reader:
        for at, record in reader.jsonl(required=("gold_label", "sentence2", IMAGE_KEY)):
            with reader.record(at):
                label = string_field(record, "gold_label", at)
                if label.strip() in NO_CONSENSUS:
                    dropped += 1
                    continue
                if label not in LABELS:
                    raise AnnotationError(f"{at}: gold_label {label!r} is not one of {sorted(LABELS)} "
                                          "(or '-' for no consensus)")
                hypothesis = string_field(record, "sentence2", at)
                try:
                    hypothesis = pre_caption(hypothesis, max_words)
                except ValueError as e:
                    raise AnnotationError(f"{at}: hypothesis {record['sentence2']!r} is empty after cleaning "
                                          f"({e})") from e
                name = file_name_field(record[IMAGE_KEY], at, IMAGE_KEY) + ".jpg"
                examples.append(XVNLIExample(root.resolve(name, at, reader.skipping), hypothesis, LABELS[label], at))
    return examples, dropped


class XVNLIDataset(ExampleDataset):
    """An XVNLI split: items ``(image tensor, hypothesis str, label int)``."""

    def __init__(self, path: PathLike, image_root: PathLike, transform: Callable, max_words: int = 80):
        examples, self.dropped = read_xvnli(path, image_root, max_words)
        super().__init__(path, examples, transform, f"no line has a usable gold_label ({self.dropped} dropped)")

    def item(self, example: XVNLIExample):
        return self.transform(load_image(example.image, where=example.at)), example.hypothesis, example.label


def collate_xvnli(batch):
    """``(images [B,3,H,W], hypotheses list[str], labels LongTensor [B])``."""
    images, texts, labels = zip(*batch)
    return torch.stack(images), list(texts), torch.tensor(labels, dtype=torch.long)
