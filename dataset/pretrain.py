"""Pre-training data (docs/data-formats.md#pre-training-records): image + multilingual captions, monolingual
image-text, parallel text and 4M regions, read from jsonl shards (dataset.shards) or webdataset tar shards
(dataset.tars; not parallel text), local or remote (fsspec URLs, brace patterns: dataset.sources), as DataLoaders
whose batches are the model's forward keyword arguments. A file list whose entries are ``.tar`` files (or folders of
them) is read as tar shards.

Config: the reference's blocks and keys. File lists ``train_file`` (block ``images``), ``train_file_mono``
(``images_mono``), ``train_file_text`` (``texts_para``), ``train_file_regions`` (``regions``); top-level
``max_words``, ``max_tokens``, ``mask_prob``, ``max_masks``, ``skipgram_prb``, ``skipgram_size``, ``image_res``,
``patch_size``, ``sample_2_captions`` (``texts_para`` has its own max_words/max_tokens/mask_prob/max_masks).
Data-reading keys, in a block or at the top level (block first): ``skip_bad_samples`` (False),
``max_bad_fraction`` (0.01), ``min_records_for_bad_check`` (100), ``shuffle_buffer`` (0: stream order, as the
reference), ``image_root`` (for ``is_image_rpath``; default: the jsonl file's folder), ``image_ext`` (tar shards: the
image member's extensions, first found wins; default ``jpg;jpeg;png;webp``).
Top level only: ``sample_log`` (False; True logs every processed sample's id per pass and worker under
``output_dir/sample_log/``, see dataset.shards).

Batches (see dataset.shards for the split over ranks and workers, and the resume position):
* images: image, text_ids, text_atts, text_ids_masked, masked_pos, masked_ids (+ the same with ``_2`` for a second
  caption in another language when ``sample_2_captions``; every record then needs two languages).
* images_mono: the same without ``_2`` (``caption_key`` holds a string or a list of strings).
* texts_para: the five text keys for view 1 and ``_2`` for view 2 (source and target swapped with probability 0.5).
* regions: image, idx_to_group_img, the five text keys, image_atts, target_bbox, is_image, ret_bbox_loss=True
  (``max_images`` records per batch, exactly ``batch_size`` pairs; see dataset.pretrain_regions).
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from dataset.masking import TextMasker
from dataset.pretrain_common import TextSpec, choose_captions, collate_samples, read_record_image, require
from dataset.pretrain_regions import RegionCollate, RegionProcessor
from dataset.shards import BadRecordError, LineRef, ShardedJsonl, ShardedJsonlDataset, derived_seed, keep_batch
from dataset.sources import list_data_files
from dataset.tars import IMAGE_EXTS, TAR_SUFFIXES, ShardedTars, TarLayout, is_tar_shard
from dataset.transforms import build_transform
from utils.remote import is_url

logger = logging.getLogger(__name__)

# loader name -> (file list key, config block)
SOURCES = {
    "images": ("train_file", "images"),
    "images_mono": ("train_file_mono", "images_mono"),
    "texts_para": ("train_file_text", "texts_para"),
    "regions": ("train_file_regions", "regions"),
}


class ImageTextProcessor:
    """Image + caption record -> image tensor and the text inputs (one or two captions in distinct languages)."""

    def __init__(self, text: TextSpec, transform, image_key: str = "binary", is_image_rpath: bool = False,
                 caption_key: str = "caption", two_captions: bool = False, language_chosen=None, image_root=None):
        self.text, self.transform = text, transform
        self.image_key, self.is_image_rpath, self.caption_key = image_key, is_image_rpath, caption_key
        self.two_captions, self.language_chosen, self.image_root = two_captions, language_chosen, image_root

    def __call__(self, record: dict, ref: LineRef, rng: random.Random) -> dict:
        captions = choose_captions(require(record, self.caption_key, ref), ref, rng, 2 if self.two_captions else 1,
                                   self.language_chosen)
        image = read_record_image(record, self.image_key, self.is_image_rpath, ref, self.image_root)
        sample = {"image": self.transform(image)}
        for (_, caption), suffix in zip(captions, ("", "_2")):
            sample.update(self.text.encode(caption, rng, ref, suffix))
        return sample


class ParaTextProcessor:
    """Translation pair -> view 1 and view 2 text inputs, the order drawn at random."""

    def __init__(self, text: TextSpec, source_key: str = "source_text", target_key: str = "target_text"):
        self.text, self.source_key, self.target_key = text, source_key, target_key

    def __call__(self, record: dict, ref: LineRef, rng: random.Random) -> dict:
        pair = [require(record, self.source_key, ref), require(record, self.target_key, ref)]
        for key, value in zip((self.source_key, self.target_key), pair):
            if not isinstance(value, str):
                raise BadRecordError(f"{key!r} must be a string, got {type(value).__name__}", ref)
        if rng.random() < 0.5:
            pair.reverse()
        sample = self.text.encode(pair[0], rng, ref)
        sample.update(self.text.encode(pair[1], rng, ref, "_2"))
        return sample


# ------------------------------------------------------------------------------------------------- config

def _block(config: dict, name: str) -> dict:
    block = config.get(name)
    if not isinstance(block, dict):
        raise KeyError(f"config: the block {name!r} is missing or not a mapping")
    return block


def _get(config: dict, block: dict, key: str, default: Any = None, block_name: str = "") -> Any:
    """A key from the block, else from the top level, else ``default`` (KeyError when it is required)."""
    if key in block:
        return block[key]
    if key in config:
        return config[key]
    if default is None:
        raise KeyError(f"config: {key!r} is missing (looked in {block_name!r} and at the top level)")
    return default


def _file_list(config: dict, key: str, root) -> list[str]:
    value = config.get(key) or []
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    return [str(Path(root) / p) if root and not is_url(p) and not Path(p).is_absolute() else str(p) for p in value]


def is_tar_source(files: list[str], what: str) -> bool:
    """Whether a file list names webdataset tar shards (files or folders of them) rather than jsonl shards."""
    kinds = set()
    for entry in files:
        if is_tar_shard(entry) or entry.endswith(".jsonl"):
            kinds.add(is_tar_shard(entry))
            continue
        try:
            list_data_files(entry, TAR_SUFFIXES)
            kinds.add(True)
        except FileNotFoundError:
            kinds.add(False)  # a folder of jsonl shards (or an error the jsonl reader reports)
    if len(kinds) > 1:
        raise ValueError(f"config: {what} mixes tar shards and jsonl files; give one kind per source")
    return kinds == {True}


def build_reader(name: str, config: dict, block: dict, files: list[str], rank: int, world_size: int, seed: int):
    """The source's ShardedTars (tar shards) or ShardedJsonl (jsonl files)."""
    files_key, block_name = SOURCES[name]
    shuffle = bool(block.get("shuffle", True))
    shuffle_buffer = int(_get(config, block, "shuffle_buffer", 0))
    if not is_tar_source(files, files_key):
        return ShardedJsonl(files, rank, world_size, seed, shuffle=shuffle, shuffle_buffer=shuffle_buffer)
    if name == "texts_para":
        raise ValueError(f"config: {files_key} names tar shards; parallel text is read from jsonl files")
    exts = block.get("image_ext", ";".join(IMAGE_EXTS))
    layout = TarLayout(image_exts=tuple(e.strip().lower() for e in str(exts).split(";") if e.strip()),
                       image_key=block.get("image_key", "binary"),
                       caption_key=block.get("caption_key", "desc" if name == "images_mono" else "caption"),
                       caption_required=name != "regions")
    return ShardedTars(files, rank, world_size, seed, shuffle=shuffle, shuffle_buffer=shuffle_buffer, layout=layout,
                       skip_bad_samples=bool(_get(config, block, "skip_bad_samples", False)))


def text_spec(config: dict, block: dict, block_name: str, tokenizer) -> TextSpec:
    """The text settings of a block (``texts_para`` overrides the top level)."""
    masker = TextMasker(tokenizer, float(_get(config, block, "mask_prob", block_name=block_name)),
                        int(_get(config, block, "max_masks", block_name=block_name)),
                        float(config.get("skipgram_prb", 0.0)), int(config.get("skipgram_size", 1)))
    return TextSpec(tokenizer, int(_get(config, block, "max_words", block_name=block_name)),
                    int(_get(config, block, "max_tokens", block_name=block_name)), masker,
                    bool(block.get("tokenized", False)))


def build_processor(name: str, config: dict, tokenizer, root=None):
    """(process, collate, records per batch) of loader ``name``."""
    block = _block(config, SOURCES[name][1])
    text = text_spec(config, block, SOURCES[name][1], tokenizer)
    image_root = block.get("image_root", config.get("image_root"))
    if image_root and root and not Path(image_root).is_absolute():
        image_root = str(Path(root) / image_root)
    common = dict(image_key=block.get("image_key", "binary"), is_image_rpath=bool(block.get("is_image_rpath", False)),
                  language_chosen=block.get("language_chosen"), image_root=image_root)
    batch_size = int(_get(config, block, "batch_size", block_name=SOURCES[name][1]))
    if name == "texts_para":
        return (ParaTextProcessor(text, block.get("source_key", "source_text"), block.get("target_key", "target_text")),
                collate_samples, batch_size)
    image_res = int(_get(config, block, "image_res", block_name=SOURCES[name][1]))
    if name == "regions":
        if block.get("caption_key", "caption") != "caption":
            raise ValueError("config: regions.caption_key must be 'caption' (element captions use that key)")
        process = RegionProcessor(
            text, build_transform("region", image_res), image_res, int(_get(config, block, "patch_size", 32)),
            caption_key="caption", max_regions=int(block.get("max_regions", 5)),
            min_perc_in_image=float(block.get("min_perc_in_image", 0.5)),
            careful_hflip=bool(block.get("careful_hflip", True)), code_switch=bool(block.get("code_switch", False)),
            **common)
        return process, RegionCollate(batch_size), int(_get(config, block, "max_images", block_name="regions"))
    two = name == "images" and bool(config.get("sample_2_captions", False))
    caption_key = block.get("caption_key", "desc" if name == "images_mono" else "caption")
    process = ImageTextProcessor(text, build_transform("pretrain", image_res), caption_key=caption_key,
                                 two_captions=two, **common)
    return process, collate_samples, batch_size


def sample_log_folder(config: dict) -> Path | None:
    """``output_dir/sample_log`` when ``sample_log`` is on (every processed sample's id, per pass and worker)."""
    if not config.get("sample_log"):
        return None
    if not config.get("output_dir"):
        raise KeyError("config: sample_log needs output_dir (the log goes to output_dir/sample_log)")
    return Path(config["output_dir"]) / "sample_log"


def build_pretrain_datasets(config: dict, tokenizer, rank: int = 0, world_size: int = 1, seed: int = 0,
                            epoch: int = 0, root=None, repeat: bool = True) -> dict[str, ShardedJsonlDataset]:
    """One ShardedJsonlDataset per configured source with files (names as in SOURCES)."""
    datasets = {}
    for name, (files_key, block_name) in SOURCES.items():
        files = _file_list(config, files_key, root)
        if not files:
            continue
        block = _block(config, block_name)
        process, collate, batch_size = build_processor(name, config, tokenizer, root)
        reader = build_reader(name, config, block, files, rank, world_size, seed)
        datasets[name] = ShardedJsonlDataset(
            reader, process, collate, batch_size, epoch=epoch, repeat=repeat,
            skip_bad_samples=bool(_get(config, block, "skip_bad_samples", False)),
            max_bad_fraction=float(_get(config, block, "max_bad_fraction", 0.01)),
            min_records_for_bad_check=int(_get(config, block, "min_records_for_bad_check", 100)), name=name,
            sample_log=sample_log_folder(config))
    return datasets


def build_pretrain_loaders(config: dict, tokenizer, rank: int = 0, world_size: int = 1, seed: int = 0,
                           epoch: int = 0, positions: dict[str, tuple[int, int]] | None = None, root=None,
                           repeat: bool = True, pin_memory: bool | None = None) -> dict[str, DataLoader]:
    """DataLoaders of every configured source, each starting at ``positions[name]`` = (epoch, batches consumed).

    ``seed`` must be the same on every rank (it fixes the split and the shuffles). Loaders are endless when
    ``repeat`` (the reference's behaviour); ``num_workers`` comes from each block. Batches are dicts of the model's
    forward keyword arguments.
    """
    datasets = build_pretrain_datasets(config, tokenizer, rank, world_size, seed, epoch, root, repeat)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    loaders = {}
    for name, dataset in datasets.items():
        if positions and name in positions:
            dataset.set_position(*positions[name])
        workers = int(_block(config, SOURCES[name][1]).get("num_workers", 0))
        if workers > 0:
            # The tokenizer is used before the workers fork; its own threads would then warn or deadlock.
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # A private generator: creating the iterator must not draw from the global RNG (a resumed run creates it
        # at another point of the RNG stream than the uninterrupted run did).
        generator = torch.Generator().manual_seed(derived_seed(seed, name, rank))
        loaders[name] = DataLoader(dataset, batch_size=None, collate_fn=keep_batch, num_workers=workers,
                                   pin_memory=pin_memory, persistent_workers=workers > 0, generator=generator)
    return loaders
