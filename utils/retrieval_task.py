"""What Retrieval.py, xFlickrCO.py and WIT.py share: data assembly, the training batch, the two-stage evaluation of
every language, the evaluation cadence, best-epoch selection and the results files.

A script only says which data it reads (a :class:`RetrievalData`) and calls :func:`run_retrieval_task`.

Metric names: ``<split>_<lang>_<metric>`` (``val_en_r_mean``, ``test_de_txt_r1``, ...; ``itc_`` before the metric
for the contrastive-only ranking), plus the selection metric:

* ``val_r_mean``: mean ``r_mean`` over the selection languages' validation sets (our default where one exists);
* ``test_r_mean``: the same over test sets (what the reference did for Multi30K/COCO and every few-shot run);
* ``eval_step``: the optimiser step of the evaluation, i.e. the last evaluated epoch wins (few-shot runs without a
  target-language validation set; IGLUE has none).
"""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch

from dataset.retrieval import (ImageRoots, RetrievalEvalData, RetrievalEvalDataset, RetrievalTrainDataset,
                               collate_retrieval_eval, collate_retrieval_train, load_retrieval_eval,
                               load_retrieval_train)
from dataset.tokenizer import load_tokenizer
from dataset.transforms import build_transform
from models.factory import create_model
from models.ranking import CCLMView, EncodedImages, encode_images, encode_texts, evaluate_retrieval
from utils.checkpoint import BEST, load_file, model_state_from_file
from utils.cli import TaskSpec, key_of_test_files, setup_run
from utils.config import ConfigError
from utils.data import build_loader, set_loader_epoch
from utils.dist import barrier, cleanup_distributed, get_world_size
from utils.engine import Trainer
from utils.logging import append_jsonl
from utils.precision import autocast_context, resolve_precision
from utils.results import write_results
from utils.task import load_starting_weights, prepare_text_encoder, resolve_data_root

logger = logging.getLogger(__name__)

METRICS = ("txt_r1", "txt_r5", "txt_r10", "txt_r_mean", "img_r1", "img_r5", "img_r10", "img_r_mean", "r_mean")
SELECTION_SPLITS = ("val", "test", "last")


# ---------------------------------------------------------------------------------------------------- data

def language_files(spec, languages, root: Path, key: str) -> dict[str, Path]:
    """``{lang: path}`` from ``spec``: a ``{lang: path}`` mapping, or a path template with ``{lang}``.

    ``languages`` picks (and orders) languages; None takes every mapping entry, or every language whose templated
    file exists. A language without a file is an error naming the config key and the path.
    """
    if spec is None:
        if languages:
            raise ConfigError(f"config {key!r} is null but {key.replace('file', 'languages')} names {languages}")
        return {}
    if isinstance(spec, Mapping):
        langs = list(spec) if languages is None else list(languages)
        missing = [lang for lang in langs if lang not in spec]
        if missing:
            raise ConfigError(f"config {key!r} has no file for language(s) {missing} (it has {list(spec)})")
        return _existing({lang: root / str(spec[lang]) for lang in langs}, key)
    template = str(spec)
    if "{lang}" not in template:
        raise ConfigError(f"config {key!r} must be a {{lang: path}} mapping or a path template with {{lang}}, "
                          f"got {template!r}")
    if languages is None:
        head, tail = str(root / template).split("{lang}", 1)
        found = sorted(glob.glob(glob.escape(head) + "*" + glob.escape(tail)))
        languages = [p[len(head):len(p) - len(tail)] for p in found]
        languages = [lang for lang in languages if lang and os.sep not in lang]
        if "en" in languages:  # English (the training language) first, as in the reference tables
            languages = ["en"] + [lang for lang in languages if lang != "en"]
        if not languages:
            raise ConfigError(f"config {key!r}: no file matches {root / template}")
    return _existing({lang: root / template.format(lang=lang) for lang in languages}, key)


def _existing(files: dict[str, Path], key: str) -> dict[str, Path]:
    missing = [f"{lang}: {path}" for lang, path in files.items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"config {key!r}: no such file for {'; '.join(missing)}")
    return files


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
        return "eval_step" if self.split == "last" else f"{self.split}_r_mean"

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


def optional_language_file(spec, language: str, root: Path) -> Path | None:
    """The file of ``language`` in a ``{lang: path}`` mapping or template, or None when there is none."""
    if spec is None or (isinstance(spec, Mapping) and language not in spec):
        return None
    path = root / (str(spec[language]) if isinstance(spec, Mapping) else str(spec).format(lang=language))
    return path if path.is_file() else None


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


# ---------------------------------------------------------------------------------------------------- batches

class TrainCollate:
    """Images stacked, captions tokenised (padding to the longest), image ids: the model's keyword batch."""

    def __init__(self, tokenizer, max_tokens: int, truncation: bool):
        self.tokenizer, self.max_tokens, self.truncation = tokenizer, int(max_tokens), bool(truncation)

    def __call__(self, items) -> dict:
        images, captions, idx = collate_retrieval_train(items)
        # Multi30K/COCO: the reference gave max_length without truncation (only the word cap applies, spec B6).
        limits = {"truncation": True, "max_length": self.max_tokens} if self.truncation else {}
        tok = self.tokenizer(captions, padding="longest", return_tensors="pt", **limits)
        return {"image": images, "text_ids": tok["input_ids"], "text_atts": tok["attention_mask"], "idx": idx}


def per_process_batch(config: Mapping, dataset_size: int, world_size: int) -> int:
    """``batch_size_train``, capped so that every process gets at least one full batch (spec B1: the reference's
    few-shot runs with ``--bs 128`` had zero steps per epoch)."""
    wanted = int(config["batch_size_train"])
    fits = dataset_size // world_size
    if fits < 1:
        raise ValueError(f"{dataset_size} training captions cannot be split over {world_size} processes")
    if wanted > fits:
        logger.warning("batch_size_train %d is more than the %d captions per process: using %d (spec B1)",
                       wanted, fits, fits)
        return fits
    return wanted


# ---------------------------------------------------------------------------------------------------- evaluation

class RetrievalEvaluator:
    """Two-stage evaluation of every val/test language; images shared by several languages are encoded once."""

    def __init__(self, config: Mapping, data: RetrievalData, tokenizer, device: torch.device):
        self.config, self.data, self.tokenizer, self.device = config, data, tokenizer, device

    def _encode_images(self, model, ds: RetrievalEvalDataset) -> EncodedImages:
        loader = build_loader(ds, int(self.config["batch_size_test"]), train=False,
                              num_workers=int(self.config.get("run", {}).get("num_workers", 0) or 0),
                              collate_fn=collate_retrieval_eval)
        return encode_images(model, (images for images, _ in loader), self.device)

    def evaluate_set(self, model, ds: RetrievalEvalDataset, cache: dict | None = None) -> dict:
        """The nine reference metrics (and ``itc_*``) of one language's set."""
        adapter = CCLMView(model)
        key = tuple(ds.images)
        if cache is not None and key in cache:
            img = cache[key]
        else:
            img = self._encode_images(adapter, ds)
            if cache is not None:
                cache.clear()  # keep one image set in memory: consecutive languages usually share it
                cache[key] = img
        txt = encode_texts(adapter, ds.texts, self.tokenizer, int(self.config["max_tokens"]),
                           int(self.config["batch_size_test_text"]), self.device)
        return evaluate_retrieval(adapter, img, txt, ds.img2txt, ds.txt2img, k_test=int(self.config["k_test"]),
                                  rerank_batch=int(self.config.get("rerank_batch") or 128))

    def __call__(self, model) -> dict:
        """Flat metrics of every set, ``<split>_<lang>_<metric>``, plus the selection metric (except ``eval_step``)."""
        metrics: dict = {}
        cache: dict = {}
        for split, sets in (("val", self.data.val), ("test", self.data.test)):
            for lang, ds in sets.items():
                result = self.evaluate_set(model, ds, cache)
                logger.info("%s %s: %s", split, lang, " ".join(f"{k} {result[k]:.2f}" for k in METRICS))
                metrics.update({f"{split}_{lang}_{k}": float(v) for k, v in result.items()})
        selection = self.data.selection
        if selection.split != "last":
            values = [metrics[f"{selection.split}_{lang}_r_mean"] for lang in selection.languages]
            metrics[selection.metric] = sum(values) / len(values)
        return metrics


def eval_due(epoch: int, start_eval: int, eval_interval: int, epochs: int) -> bool:
    """Whether epoch ``epoch`` (0-based) is evaluated: from ``start_eval`` on, every ``eval_interval``-th epoch
    (``(epoch + 1) % eval_interval == 0``, as the reference), and always the last one."""
    if epoch >= epochs - 1:
        return True
    return epoch >= start_eval and (epoch + 1) % max(1, eval_interval) == 0


def evaluate_without_training(model, evaluator: Callable, config: Mapping, device: torch.device) -> dict:
    """One evaluation in eval mode, no grad, under the config's precision."""
    model.to(device).eval()
    with torch.no_grad(), autocast_context(resolve_precision(config, device), device):
        return dict(evaluator(model))


class ScheduledEvaluation:
    """The Trainer's ``evaluate``: runs the evaluator on due epochs only and keeps every result by step."""

    def __init__(self, config: Mapping, evaluator: RetrievalEvaluator, selection: Selection):
        self.config, self.evaluator, self.selection = config, evaluator, selection
        self.trainer: Trainer | None = None
        self.history: dict[int, dict] = {}  # step -> {"epoch", "metrics"}

    def trained_epoch(self) -> int:
        state = self.trainer.state
        # After a full epoch the trainer has moved to the next one; after run.max_steps it stays inside it.
        return state.epoch - 1 if state.batches_in_epoch == 0 else state.epoch

    def __call__(self, model) -> dict:
        epoch = self.trained_epoch()
        stopped_early = self.trainer.state.batches_in_epoch != 0
        due = stopped_early or eval_due(epoch, int(self.config.get("start_eval", 0) or 0),
                                        int(self.config.get("eval_interval", 1) or 1), self.trainer.epochs)
        if not due:
            logger.info("epoch %d: no evaluation (start_eval %s, eval_interval %s)", epoch,
                        self.config.get("start_eval"), self.config.get("eval_interval"))
            return {}
        metrics = self.evaluator(model)
        if self.selection.split == "last":
            metrics["eval_step"] = float(self.trainer.state.step)
        self.history[self.trainer.state.step] = {"epoch": epoch, "metrics": dict(metrics)}
        return metrics


# ---------------------------------------------------------------------------------------------------- results

def split_rows(metrics: Mapping, split: str, languages) -> dict[str, dict]:
    """``{lang: {metric: value}}`` of one split from flat metrics (the nine reference metrics)."""
    return {lang: {k: metrics[f"{split}_{lang}_{k}"] for k in METRICS if f"{split}_{lang}_{k}" in metrics}
            for lang in languages}


def itc_rows(metrics: Mapping, split: str, languages) -> dict[str, dict]:
    """Contrastive-only (stage 1) metrics per language."""
    return {lang: {k: metrics[f"{split}_{lang}_itc_{k}"] for k in METRICS if f"{split}_{lang}_itc_{k}" in metrics}
            for lang in languages}


def set_sizes(data: RetrievalData) -> dict:
    """``{split: {lang: {"images": n, "texts": m}}}`` of the evaluation sets."""
    return {split: {lang: {"images": len(ds), "texts": len(ds.texts)} for lang, ds in sets.items()}
            for split, sets in (("val", data.val), ("test", data.test))}


def write_retrieval_results(output_dir: Path, metrics: Mapping, data: RetrievalData, title: str,
                            extra: Mapping, iglue: bool = True) -> dict:
    """results.json / results.md: test rows per language (the nine reference metrics) + the IGLUE average (IGLUE's
    tasks only: Multi30K and MSCOCO are not IGLUE benchmarks)."""
    rows = split_rows(metrics, "test", data.test)
    note = ("Values are percentages: recall@K of image->text (txt_r) and text->image (img_r) retrieval, two-stage "
            "(the contrastive top k_test re-ranked by the matching head). Best epoch: "
            f"{data.selection.describe()}.")
    payload = {**extra, "protocol": data.protocol, "selection": data.selection.describe(),
               "selection_metric": data.selection.metric, "val": split_rows(metrics, "val", data.val),
               "test_itc_only": itc_rows(metrics, "test", data.test), "sizes": set_sizes(data), **data.details}
    return write_results(output_dir, rows, primary="r_mean", title=title, note=note, extra=payload, iglue=iglue)


# ---------------------------------------------------------------------------------------------------- the run

@dataclass
class RetrievalTask:
    """One retrieval script: its flags/config spec, its title, and how it reads its data."""

    spec: TaskSpec
    title: str
    load_data: Callable[[dict, Path], RetrievalData]   # (config, data root) -> data
    prepare_data: Callable[[dict, Path], None] | None = None  # rank 0, before load_data (e.g. WIT's image join)
    iglue: bool = True  # an IGLUE benchmark: results carry the IGLUE average over the non-English languages


def best_metrics(trainer: Trainer, run: ScheduledEvaluation, evaluator: RetrievalEvaluator, model,
                  output_dir: Path, config: Mapping, device: torch.device, last: dict) -> tuple[dict, dict]:
    """(metrics of the best evaluation, facts about it); reloads checkpoint_best when it predates a resume."""
    best = dict(trainer.state.best or {})
    step = best.get("step")
    if step is None:
        return last, {"best_step": trainer.state.step, "best_epoch": None, "note": "no evaluation chose a best"}
    if step in run.history:
        entry = run.history[step]
        return entry["metrics"], {"best_step": step, "best_epoch": entry["epoch"]}
    path = output_dir / BEST
    logger.info("the best evaluation (step %s) predates this process: re-evaluating %s", step, path)
    model.load_state_dict(model_state_from_file(load_file(path), where=str(path)), strict=True)
    metrics = evaluate_without_training(model, evaluator, config, device)
    return metrics, {"best_step": step, "best_epoch": None, "note": f"re-evaluated from {BEST}"}


def run_retrieval_task(task: RetrievalTask, argv=None) -> dict:
    """The whole run of a retrieval script: set-up, data, model, training with scheduled evaluation, results.

    Returns the results.json payload on rank 0 ({} on the other ranks).
    """
    run = setup_run(task.spec, argv, task.title)
    config, env = run.config, run.env
    try:
        root = resolve_data_root(config)
        if task.prepare_data is not None:
            if env.is_main:
                task.prepare_data(config, root)
            barrier()
        config["text_encoder"] = prepare_text_encoder(config, root)
        tokenizer = load_tokenizer(config["text_encoder"])
        data = task.load_data(config, root)
        logger.info("protocol %s; test languages %s; best epoch: %s", data.protocol, ", ".join(data.test),
                    data.selection.describe())
        model = create_model("cclm_retrieval", config, root=root)
        load_starting_weights(model, config)
        evaluator = RetrievalEvaluator(config, data, tokenizer, env.device)
        extra = {"task": task.spec.name, "checkpoint": config.get("checkpoint"), "fewshot": config.get("fewshot"),
                 "translate_test": bool(config.get("gmt")),
                 "k_test": int(config["k_test"])}
        if config.get("evaluate"):
            metrics = evaluate_without_training(model, evaluator, config, env.device)
            if not env.is_main:
                return {}
            return write_retrieval_results(run.output_dir, metrics, data, task.title, {**extra, "evaluate_only": True},
                                           iglue=task.iglue)
        if data.train is None:
            raise ValueError(f"{task.spec.name}: no training data (train_file is empty)")
        return _train(task, config, env, run.output_dir, data, model, tokenizer, evaluator, extra)
    finally:
        cleanup_distributed()


def _train(task, config, env, output_dir: Path, data: RetrievalData, model, tokenizer, evaluator, extra) -> dict:
    batch = per_process_batch(config, len(data.train), env.world_size)
    collate = TrainCollate(tokenizer, config["max_tokens"], config.get("train_truncation", False))
    loader = build_loader(data.train, batch, train=True, rank=env.rank, world_size=env.world_size,
                          seed=int(config["seed"]), num_workers=int(config["run"].get("num_workers", 0) or 0),
                          collate_fn=collate)
    steps = len(loader)  # the real number of batches (the reference planned ceil(N / (bs x W)), spec B1)

    def train_batches(epoch: int, skip: int):
        set_loader_epoch(loader, epoch, skip)
        return loader

    scheduled = ScheduledEvaluation(config, evaluator, data.selection)
    trainer = Trainer(config, env, model, output_dir=output_dir, steps_per_epoch=steps, train_batches=train_batches,
                      evaluate=scheduled, primary_metric=data.selection.metric, init_params=model.init_params)
    scheduled.trainer = trainer
    if config.get("resume"):
        trainer.resume(config["resume"])
    elif config.get("eval_before_training"):
        metrics = evaluate_without_training(model, evaluator, config, env.device)
        model.train()
        if env.is_main:
            append_jsonl(output_dir / "metrics.jsonl", {"epoch": -1, "step": 0, "before_training": True,
                                                        **{f"eval/{k}": v for k, v in metrics.items()}})
    last = trainer.fit()
    metrics, facts = best_metrics(trainer, scheduled, evaluator, trainer.raw_model, output_dir, config, env.device,
                                   last)
    history = [{"step": s, "epoch": h["epoch"], "selection": h["metrics"].get(data.selection.metric),
                **{f"test_{lang}_r_mean": h["metrics"].get(f"test_{lang}_r_mean") for lang in data.test}}
               for s, h in sorted(scheduled.history.items())]
    if not env.is_main:
        return {}
    return write_retrieval_results(output_dir, metrics, data, task.title,
                                   {**extra, **facts, "steps": trainer.state.step, "steps_per_epoch": steps,
                                    "batch_size_train": batch, "world_size": get_world_size(),
                                    "epochs": trainer.epochs, "evaluations": history,
                                    "last": split_rows(last, "test", data.test) if last else {}},
                                   iglue=task.iglue)

