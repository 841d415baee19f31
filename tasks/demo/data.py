"""The demo's data: the synthetic world's pre-training records as tensors in memory, the held-out scenes in every
language, and the seeded batches of an epoch (the same image-text batches in both arms)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from dataset.checked import AnnotationError, iter_jsonl
from dataset.images import load_image
from dataset.retrieval import read_caption_json_eval
from dataset.shards import derived_seed
from dataset.text import pad_ids, pre_caption, tokenize_to_ids
from dataset.transforms import build_transform

HELDOUT_FILE = "data/finetune/multi30k/test_2016_flickr.{lang}.json"


@dataclass
class TrainingData:
    """The world's pre-training records as tensors in memory (a few thousand small images and sentences)."""

    images: torch.Tensor          # N x 3 x res x res
    captions: list[list[int]]     # per image: indices into caption_ids
    caption_ids: torch.Tensor     # M x max_tokens
    caption_atts: torch.Tensor
    para_ids: torch.Tensor        # P x 2 x max_tokens (source, target)
    para_atts: torch.Tensor


class TextInputs:
    """Clean, tokenise and pad texts exactly as the task loaders do: text -> (ids, attention mask)."""

    def __init__(self, tokenizer, max_words: int, max_tokens: int):
        self.tokenizer, self.max_words, self.max_tokens = tokenizer, max_words, max_tokens

    def __call__(self, text: str, at: str) -> tuple[list[int], list[int]]:
        try:
            ids = tokenize_to_ids(self.tokenizer, pre_caption(text, self.max_words), self.max_tokens)
        except ValueError as e:
            raise AnnotationError(f"{at}: cannot use the text {text!r}: {e}") from None
        return pad_ids(ids, self.max_tokens, self.tokenizer.pad_token_id)


def _shard_files(root: Path, folders: list[str], key: str) -> list[Path]:
    files = []
    for folder in folders:
        path = root / folder
        found = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
        if not found or not found[0].is_file():
            raise FileNotFoundError(f"config {key}: {path} has no .jsonl file")
        files += found
    return files


def _captions_in(value, lang: str, at: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    texts = [item.get(lang) for item in items if isinstance(item, dict)]
    if not texts or any(not isinstance(t, str) for t in texts):
        raise AnnotationError(f"{at}: every caption must be a dict with a {lang!r} text (the demo trains on "
                              f"demo.caption_language={lang!r}), got {value!r}")
    return texts


def load_training_data(config: dict, root: Path, encode: TextInputs) -> TrainingData:
    """Read the image-text and parallel-text shards named by ``train_file`` and ``train_file_text``."""
    transform = build_transform("test", int(config["image_res"]))
    lang = config["demo"]["caption_language"]
    images, captions, ids, atts = [], [], [], []
    for path in _shard_files(root, list(config["train_file"]), "train_file"):
        for line, record in iter_jsonl(path):
            at = f"{path}:{line}"
            if "binary" not in record or "caption" not in record:
                raise AnnotationError(f"{at}: an image-text record needs 'binary' and 'caption', has {sorted(record)}")
            images.append(transform(load_image(record["binary"], base64=True, where=at)))
            captions.append([])
            for text in _captions_in(record["caption"], lang, at):
                captions[-1].append(len(ids))
                text_ids, text_atts = encode(text, at)
                ids.append(text_ids)
                atts.append(text_atts)
    pairs = []
    for path in _shard_files(root, list(config["train_file_text"]), "train_file_text"):
        for line, record in iter_jsonl(path):
            at = f"{path}:{line}"
            if "source_text" not in record or "target_text" not in record:
                raise AnnotationError(f"{at}: a translation pair needs 'source_text' and 'target_text', has "
                                      f"{sorted(record)}")
            pairs.append([encode(record["source_text"], at), encode(record["target_text"], at)])
    if not images or not pairs:
        raise ValueError(f"the world under {root} has {len(images)} training images and {len(pairs)} translation pairs; "
                         "the demo needs both")
    para = torch.tensor(pairs)  # P x 2 (source, target) x 2 (ids, atts) x max_tokens
    return TrainingData(torch.stack(images), captions, torch.tensor(ids), torch.tensor(atts), para[:, :, 0],
                        para[:, :, 1])


@dataclass
class HeldOut:
    """The held-out scenes: one image tensor batch and, per language, the (parallel) captions."""

    images: torch.Tensor
    texts: dict[str, list[str]]
    img2txt: list[list[int]]
    txt2img: list[int]


def load_heldout(root: Path, languages: list[str], image_res: int, max_words: int) -> HeldOut:
    """Read ``test_2016_flickr.<lang>.json`` of every language; all must list the same images in the same order."""
    transform = build_transform("test", image_res)
    texts, reference = {}, None
    for lang in languages:
        path = root / HELDOUT_FILE.format(lang=lang)
        data = read_caption_json_eval(path, root / "images", max_words)
        if reference is None:
            reference = data
        elif [str(i) for i in data.images] != [str(i) for i in reference.images] or data.img2txt != reference.img2txt:
            raise AnnotationError(f"{path}: its images or caption counts differ from "
                                  f"{root / HELDOUT_FILE.format(lang=languages[0])}; the held-out sets must be parallel")
        texts[lang] = data.texts
    images = torch.stack([transform(ref.load()) for ref in reference.images])
    return HeldOut(images, texts, reference.img2txt, reference.txt2img)


def trim_padding(ids: torch.Tensor, atts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the padding columns no row of the batch needs (positions start at 0, so nothing else changes)."""
    length = max(1, int(atts.sum(dim=1).max()))
    return ids[:, :length], atts[:, :length]


class EpochBatches:
    """The batches of one epoch, drawn from seeded generators: the image-text draws depend only on (seed, epoch), so
    both arms see the same image-text batches; parallel-text draws come from their own generator."""

    def __init__(self, data: TrainingData, config: dict, epoch: int, skip: int, with_parallel: bool,
                 steps_per_epoch: int, total_steps: int):
        self.data, self.epoch, self.skip, self.with_parallel = data, epoch, skip, with_parallel
        self.steps, self.total = steps_per_epoch, total_steps
        self.batch_size = min(int(config["images"]["batch_size"]), len(data.images))
        self.para_batch_size = min(int(config["texts_para"]["batch_size"]), len(data.para_ids))
        demo, seed = config["demo"], int(config["seed"])
        self.itm_from, self.itm_every = float(demo["itm_from"]), max(1, int(demo["itm_every"]))
        self.images = torch.Generator().manual_seed(derived_seed(seed, "demo-images", epoch))
        self.texts = torch.Generator().manual_seed(derived_seed(seed, "demo-para", epoch))

    def __len__(self) -> int:
        return self.steps - self.skip

    def with_itm(self, step: int) -> bool:
        """Whether global step ``step`` adds the matching loss (from ``itm_from`` x total steps, every k-th)."""
        first = math.ceil(self.itm_from * self.total)
        return self.itm_from < 1 and step >= first and (step - first) % self.itm_every == 0

    def draw(self, step: int) -> dict:
        data = self.data
        rows = torch.randperm(len(data.images), generator=self.images)[:self.batch_size]
        picks = torch.randint(0, 1 << 30, (len(rows),), generator=self.images)
        caption = torch.tensor([data.captions[r][p % len(data.captions[r])] for r, p in zip(rows.tolist(),
                                                                                           picks.tolist())])
        text_ids, text_atts = trim_padding(data.caption_ids[caption], data.caption_atts[caption])
        batch = {"image": data.images[rows], "text_ids": text_ids, "text_atts": text_atts,
                 "with_itm": self.with_itm(step)}
        pairs = torch.randperm(len(data.para_ids), generator=self.texts)[:self.para_batch_size]
        if self.with_parallel:
            batch["para_ids"], batch["para_atts"] = trim_padding(data.para_ids[pairs, 0], data.para_atts[pairs, 0])
            batch["para_ids_2"], batch["para_atts_2"] = trim_padding(data.para_ids[pairs, 1],
                                                                     data.para_atts[pairs, 1])
        return batch

    def __iter__(self):
        for i in range(self.steps):
            batch = self.draw(self.epoch * self.steps + i)  # drawn even when skipped, so the stream is the same
            if i >= self.skip:
                yield batch
