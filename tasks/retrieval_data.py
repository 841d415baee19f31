"""The data of a retrieval run: training pairs, evaluation sets per split and language, and how the best epoch is
chosen; shared by Retrieval.py, xFlickrCO.py and WIT.py, whose ``load_data`` returns a :class:`RetrievalData`.

Selection (the metric the best evaluation maximises), by the config's ``selection`` block:

* ``val_r_mean``: mean ``r_mean`` over the selection languages' validation sets (our default where one exists);
* ``test_r_mean``: the same over test sets (the reference's rule for Multi30K/COCO and every few-shot run);
* the last evaluation (``split: last``): few-shot runs without a target-language validation set (IGLUE has none).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from dataset.retrieval import (ImageRoots, RetrievalEvalData, RetrievalEvalDataset, RetrievalTrainDataset,
                               load_retrieval_eval, load_retrieval_train)
from dataset.transforms import build_transform
from tasks.cli import key_of_test_files
from tasks.files import language_files, optional_language_file
from utils.config import ConfigError
from utils.schedule import LAST

logger = logging.getLogger(__name__)

SELECTION_SPLITS = ("val", "test", "last")


def image_roots(image_root, root: Path) -> ImageRoots:
    """The image roots of the config's ``image_root`` (a folder, or ``{flickr30k, coco}`` for xFlickr&CO)."""
    if image_root is None:
        return ImageRoots()
    if isinstance(image_root, Mapping):
        unknown = set(image_root) - {"images", "flickr30k", "coco", "wit"}
        if unknown:
            raise ConfigError(f"config 'image_root': unknown image root(s) {sorted(unknown)}; "
                              "expected images, flickr30k, coco, wit")
        return ImageRoots(**{k: root / str(v) for k, v in image_root.items()})
    folder = root / str(image_root)
    return ImageRoots(images=folder, flickr30k=folder, wit=folder)


@dataclass
class Selection:
    """How the best epoch is chosen: on the ``val`` or ``test`` sets of ``languages``, or the ``last`` evaluation."""

    split: str
    languages: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def metric(self) -> str:
        """The metric the best evaluation maximises (``LAST``: the last evaluation is the best)."""
        return LAST if self.split == "last" else f"{self.split}_r_mean"

    def describe(self) -> str:
        what = "the last evaluated epoch" if self.split == "last" else \
            f"mean r_mean over {self.split} of {', '.join(self.languages)}"
        return what + (f" ({self.note})" if self.note else "")


@dataclass
class RetrievalData:
    """What one run trains and evaluates on, and how it picks its best epoch."""

    train: RetrievalTrainDataset | None
    val: dict[str, RetrievalEvalDataset]
    test: dict[str, RetrievalEvalDataset]
    selection: Selection
    protocol: str                        # e.g. "fine-tune" or "few-shot de,100"
    details: dict = field(default_factory=dict)  # JSON facts for results.json (files, shots, ...)


def choose_selection(config: Mapping, val: Mapping, test: Mapping) -> Selection:
    """The ``selection`` block applied to the evaluation sets at hand."""
    block = config.get("selection") or {}
    split = str(block.get("split", "val"))
    if split not in SELECTION_SPLITS:
        raise ConfigError(f"config 'selection.split' must be one of {SELECTION_SPLITS}, got {split!r}")
    if split == "last":
        return Selection("last")
    sets = val if split == "val" else test
    if not sets:
        raise ConfigError(f"config 'selection.split' is {split!r} but the run has no {split} set "
                          f"(set {split}_file, or selection.split=last)")
    languages = list(block.get("languages") or sets)
    missing = [lang for lang in languages if lang not in sets]
    if missing:
        raise ConfigError(f"config 'selection.languages' names {missing}, which have no {split} set "
                          f"(the {split} languages are {list(sets)})")
    note = "the reference's rule: model selection on test data" if split == "test" else ""
    return Selection(split, languages, note)


def fewshot_selection(config: Mapping, val: Mapping, test: Mapping, language: str) -> Selection:
    """Few-shot selection: the target language's validation set if there is one, else ``fewshot_selection``."""
    if language in val:
        return Selection("val", [language])
    mode = str(config.get("fewshot_selection") or "last")
    if mode == "test":
        return Selection("test", [language], "as the reference: no few-shot validation set, selected on test")
    if mode != "last":
        raise ConfigError(f"config 'fewshot_selection' must be 'last' or 'test', got {mode!r}")
    return Selection("last", note=f"no {language} validation set")


def load_eval_sets(fmt: str, files: Mapping[str, Path], roots: ImageRoots, max_words: int,
                   image_res: int) -> dict[str, RetrievalEvalDataset]:
    """``{lang: evaluation dataset}`` with the test transform; each file's size is logged."""
    sets = load_retrieval_eval(fmt, dict(files), build_transform("test", image_res), roots, max_words)
    for lang, ds in sets.items():
        skipped = f", {ds.data.skipped} lines skipped" if ds.data.skipped else ""
        logger.info("%s [%s]: %d images, %d texts%s", files[lang], lang, len(ds), len(ds.texts), skipped)
    return sets


def load_train_set(fmt: str, files: list[Path], roots: ImageRoots, max_words: int, image_res: int,
                   max_images: int | None = None) -> RetrievalTrainDataset:
    """The training set (train transform) of ``files`` concatenated, optionally only their first ``max_images``."""
    ds = load_retrieval_train(fmt, files, build_transform("train", image_res), roots, max_words, max_images)
    logger.info("training on %d captions of %d images from %s", len(ds), len(ds.key_to_idx),
                ", ".join(map(str, files)))
    return ds


def load_standard_data(fmt: str, config: Mapping, root: Path) -> RetrievalData:
    """Train on ``train_file`` (concatenated), evaluate ``val_file`` / ``test_file`` per language."""
    roots = image_roots(config.get("image_root"), root)
    max_words, res = int(config["max_words"]), int(config["image_res"])
    train_files = [root / str(f) for f in (config.get("train_file") or [])]
    train = load_train_set(fmt, train_files, roots, max_words, res) if train_files and not config.get("evaluate") \
        else None
    val = load_eval_sets(fmt, language_files(config.get("val_file"), config.get("val_languages"), root, "val_file"),
                         roots, max_words, res)
    key = key_of_test_files(config)
    test = load_eval_sets(fmt, language_files(config.get(key), config.get("test_languages"), root, key),
                          roots, max_words, res)
    if not test:
        raise ConfigError(f"config {key!r} gives no test set")
    return RetrievalData(train, val, test, choose_selection(config, val, test), "fine-tune",
                         {"train_files": [str(f) for f in train_files]})


def load_fewshot_data(fmt: str, config: Mapping, root: Path, files) -> RetrievalData:
    """A few-shot run (``dataset.fewshot.FewShotFiles``): its train file (or first N images), the target language's
    test set, and its validation set when the config has one for that language."""
    roots = image_roots(config.get("image_root"), root)
    max_words, res = int(config["max_words"]), int(config["image_res"])
    lang = files.language
    train = None if config.get("evaluate") else \
        load_train_set(fmt, [files.train_file], roots, max_words, res, files.max_images)
    val_file = optional_language_file(config.get("val_file"), lang, root)
    val = load_eval_sets(fmt, {lang: val_file}, roots, max_words, res) if val_file else {}
    test = load_eval_sets(fmt, {lang: files.eval_file}, roots, max_words, res)
    return RetrievalData(train, val, test, fewshot_selection(config, val, test, lang), f"few-shot {config['fewshot']}",
                         {"train_files": [str(files.train_file)], "shots": files.shots,
                          "max_images": files.max_images})


def subset_eval_data(data: RetrievalEvalData, keep: range) -> RetrievalEvalData:
    """The images ``keep`` of an evaluation set with their captions (indices renumbered)."""
    out = RetrievalEvalData(skipped=data.skipped)
    for i in keep:
        out.add_image(data.images[i], [data.texts[t] for t in data.img2txt[i]])
    return out
