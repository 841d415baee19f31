"""The retrieval task kind (Retrieval.py, xFlickrCO.py, WIT.py): ITC + ITM fine-tuning of ``cclm_retrieval``, the
two-stage evaluation of every validation and test language, and the results files.

Metric names: ``<split>_<lang>_<metric>`` (``val_en_r_mean``, ``test_de_txt_r1``, ...; ``itc_`` before the metric
for the contrastive-only ranking), plus the selection metric (:mod:`tasks.retrieval_data`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

from dataset.retrieval import RetrievalEvalDataset, collate_retrieval_eval, collate_retrieval_train
from models.ranking import CCLMView, EncodedImages, encode_images, encode_texts, evaluate_retrieval
from tasks.retrieval_data import RetrievalData
from tasks.runner import Outcome, Run, TaskKind, Training, write_task_results
from utils.data import build_loader, set_loader_epoch
from utils.config import ConfigError
from utils.errors import UserError

logger = logging.getLogger(__name__)

METRICS = ("txt_r1", "txt_r5", "txt_r10", "txt_r_mean", "img_r1", "img_r5", "img_r10", "img_r_mean", "r_mean")


class TrainCollate:
    """Images stacked, captions tokenised (padding to the longest), image ids: the model's keyword batch."""

    def __init__(self, tokenizer, max_tokens: int, truncation: bool):
        self.tokenizer, self.max_tokens, self.truncation = tokenizer, int(max_tokens), bool(truncation)

    def __call__(self, items) -> dict:
        images, captions, idx = collate_retrieval_train(items)
        # Multi30K/COCO: the reference gave max_length without truncation: only the word cap applies
        # (docs/protocols.md#retrieval-truncation).
        limits = {"truncation": True, "max_length": self.max_tokens} if self.truncation else {}
        tok = self.tokenizer(captions, padding="longest", return_tensors="pt", **limits)
        return {"image": images, "text_ids": tok["input_ids"], "text_atts": tok["attention_mask"], "idx": idx}


def per_process_batch(config: Mapping, dataset_size: int, world_size: int) -> int:
    """``batch_size_train``, capped so that every process gets at least one full batch (the reference's few-shot
    runs with ``--bs 128`` had zero steps per epoch: docs/reference-bugs.md#empty-epochs)."""
    wanted = int(config["batch_size_train"])
    fits = dataset_size // world_size
    if fits < 1:
        raise ConfigError(f"{dataset_size} training captions cannot be split over {world_size} processes")
    if wanted > fits:
        logger.warning("batch_size_train %d is more than the %d captions per process: using %d", wanted, fits, fits)
        return fits
    return wanted


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
        """Flat metrics of every set, ``<split>_<lang>_<metric>``, plus the selection metric."""
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


def split_rows(metrics: Mapping, split: str, languages, prefix: str = "") -> dict[str, dict]:
    """``{lang: {metric: value}}`` of one split from flat metrics (the nine reference metrics; ``prefix="itc_"``:
    the contrastive-only ones)."""
    return {lang: {k: metrics[f"{split}_{lang}_{prefix}{k}"] for k in METRICS
                   if f"{split}_{lang}_{prefix}{k}" in metrics} for lang in languages}


def set_sizes(data: RetrievalData) -> dict:
    """``{split: {lang: {"images": n, "texts": m}}}`` of the evaluation sets."""
    return {split: {lang: {"images": len(ds), "texts": len(ds.texts)} for lang, ds in sets.items()}
            for split, sets in (("val", data.val), ("test", data.test))}


@dataclass
class RetrievalTask(TaskKind):
    """A retrieval script: its title, how it reads its data, an optional one-time preparation, IGLUE or not."""

    title: str
    load_data: Callable[[dict, Path], RetrievalData]    # (config, data root) -> data
    prepare_data: Callable[[dict, Path], None] | None = None  # rank 0, before load_data (e.g. WIT's image join)
    iglue: bool = True  # an IGLUE benchmark: results carry the IGLUE average over the non-English languages
    model_name: str = "cclm_retrieval"

    def prepare(self, run: Run) -> None:
        if self.prepare_data is not None:
            self.prepare_data(run.config, run.root)

    def build_data(self, run: Run) -> RetrievalData:
        data = self.load_data(run.config, run.root)
        logger.info("protocol %s; test languages %s; best epoch: %s", data.protocol, ", ".join(data.test),
                    data.selection.describe())
        if not run.config.get("evaluate") and data.train is None:
            raise UserError(f"{run.info.name}: no training data (config key 'train_file' is empty)")
        return data

    def evaluator(self, run: Run, data: RetrievalData) -> RetrievalEvaluator:
        return RetrievalEvaluator(run.config, data, run.tokenizer, run.env.device)

    def selection(self, data: RetrievalData) -> str:
        return data.selection.metric

    def training(self, run: Run, data: RetrievalData, model) -> Training:
        env = run.env
        batch = per_process_batch(run.config, len(data.train), env.world_size)
        collate = TrainCollate(run.tokenizer, run.config["max_tokens"], run.config.get("train_truncation", False))
        loader = build_loader(data.train, batch, train=True, rank=env.rank, world_size=env.world_size,
                              seed=int(run.config["seed"]),
                              num_workers=int(run.config["run"].get("num_workers", 0) or 0), collate_fn=collate)

        def batches(epoch: int, skip: int):
            set_loader_epoch(loader, epoch, skip)
            return loader

        # len(loader): the real number of batches (the reference planned ceil(N / (bs x W)))
        return Training(len(loader), batches, facts={"batch_size_train": batch, "steps_per_epoch": len(loader)})

    def results(self, run: Run, data: RetrievalData, outcome: Outcome) -> dict:
        extra = {"k_test": int(run.config["k_test"])}
        if outcome.evaluate_only:
            extra["evaluate_only"] = True
        else:
            extra.update(self._training_facts(run, data, outcome))
        metrics = outcome.metrics
        note = ("Values are percentages: recall@K of image->text (txt_r) and text->image (img_r) retrieval, two-stage "
                "(the contrastive top k_test re-ranked by the matching head). Best epoch: "
                f"{data.selection.describe()}.")
        extra.update({"protocol": data.protocol, "selection": data.selection.describe(),
                      "selection_metric": data.selection.metric, "val": split_rows(metrics, "val", data.val),
                      "test_itc_only": split_rows(metrics, "test", data.test, prefix="itc_"),
                      "sizes": set_sizes(data), **data.details})
        return write_task_results(run, split_rows(metrics, "test", data.test), "r_mean", self.title, note, extra,
                                  iglue=self.iglue)

    @staticmethod
    def _training_facts(run: Run, data: RetrievalData, outcome: Outcome) -> dict:
        trainer = outcome.trainer
        if outcome.best is not None:
            chosen = {"best_step": outcome.best["step"], "best_epoch": outcome.best["epoch"]}
        else:
            chosen = {"best_step": trainer.state.step, "best_epoch": None, "note": "no evaluation chose a best"}
        history = [{"step": s, "epoch": h["epoch"], "selection": h["metrics"].get(data.selection.metric),
                    **{f"test_{lang}_r_mean": h["metrics"].get(f"test_{lang}_r_mean") for lang in data.test}}
                   for s, h in outcome.history.items()]
        last = outcome.last["metrics"] if outcome.last else {}
        return {**chosen, "steps": trainer.state.step, "world_size": run.env.world_size, "epochs": trainer.epochs,
                "evaluations": history, "last": split_rows(last, "test", data.test) if last else {},
                **outcome.facts}
