"""The understanding task kind (XVNLI.py, GQA.py, NLVR.py): per-language evaluation sets, tokenising collates,
sharded exact scoring, model selection on the English dev set, and the results files.

A task script says which data (``build_data`` -> :class:`TaskData`), which model (a ``create_model`` name) and how
to score a loader (``score(model, loader, device) -> percentage``); :class:`UnderstandingTask` does the rest:

* zero-shot (IGLUE): train on English, evaluate the selection split (English dev) and every test language at the
  scheduled epochs; the reported row of each language is its test accuracy at the evaluation with the best selection
  accuracy (earliest on ties), as the reference reported it;
* few-shot (``--fewshot``): train on the target language's few-shot file; its test set is both the selection split
  and the only row (the reference's protocol: IGLUE has no few-shot dev set, docs/protocols.md#few-shot-selection);
* ``--evaluate``: one evaluation of the model as loaded (``--checkpoint``), no training.

Evaluation loaders are split over processes and the results gathered per example index (or question id), so the
padding of the last shard never counts twice (the reference's padded dev accuracy did,
docs/reference-bugs.md#padded-evaluation). A training batch larger than a process's share of a small few-shot set is
capped to that share (docs/reference-bugs.md#empty-epochs).
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tasks.runner import Outcome, Run, TaskKind, Training, write_task_results
from utils.data import build_loader, set_loader_epoch
from utils.dist import DistEnv, all_gather_object
from utils.engine import move_to_device
from utils.errors import UserError
from utils.metrics import accuracy
from utils.results import write_predictions

logger = logging.getLogger(__name__)

SELECTION = "val_acc"          # the metric the best epoch is chosen on
METRIC = "acc"                 # the column of results.json / results.md


def tokenize(tokenizer, texts: Sequence[str], max_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of ``texts`` padded to the longest; truncated at ``max_tokens`` when it is given."""
    limits = {"truncation": True, "max_length": int(max_tokens)} if max_tokens else {}
    out = tokenizer(list(texts), padding="longest", return_tensors="pt", **limits)
    return out["input_ids"], out["attention_mask"]


class ClassificationCollate:
    """Items ``(image, ..., text, label)`` -> the model's keyword batch: one stacked tensor per name in
    ``image_keys``, then ``text_ids``, ``text_atts`` and ``targets``."""

    def __init__(self, tokenizer, image_keys: Sequence[str] = ("image",), max_tokens: int | None = None):
        self.tokenizer, self.image_keys, self.max_tokens = tokenizer, tuple(image_keys), max_tokens

    def __call__(self, batch: Sequence[tuple]) -> dict:
        columns = list(zip(*batch))
        if len(columns) != len(self.image_keys) + 2:
            raise ValueError(f"collate: items have {len(columns)} fields, expected {len(self.image_keys)} image(s), "
                             "a text and a label")
        out = {key: torch.stack(images) for key, images in zip(self.image_keys, columns)}
        out["text_ids"], out["text_atts"] = tokenize(self.tokenizer, columns[-2], self.max_tokens)
        out["targets"] = torch.tensor(columns[-1], dtype=torch.long)
        return out


@dataclass
class EvalSet:
    """One evaluation file: its dataset, the collate that makes model batches, and the file it came from."""

    dataset: Dataset
    collate: Callable
    path: str


@dataclass
class TaskData:
    """What a task evaluates and trains on.

    ``selection``: the split the best epoch is chosen on (English dev), or the language whose test set serves as it
    (few-shot runs). ``tests``: language -> test set, in row order. ``facts``: JSON-ready details for results.json.
    """

    tests: dict[str, EvalSet]
    selection: EvalSet | str
    train: Dataset | None = None
    train_collate: Callable | None = None
    protocol: str = "zero-shot"
    facts: dict = field(default_factory=dict)
    score: Callable | None = None   # overrides the task's scorer when it needs the data (xGQA's answer list)

    def selection_note(self) -> str:
        if isinstance(self.selection, str):
            return f"the {self.selection} test set (reference few-shot protocol: no held-out split)"
        return self.selection.path


def train_loader(dataset: Dataset, collate: Callable, batch_size: int, config: Mapping, env: DistEnv) -> DataLoader:
    """The training loader; a batch larger than this process's share of the data is capped to the share."""
    share = -(-len(dataset) // env.world_size)
    if batch_size > share:
        logger.warning("training batch %d per process is larger than the %d examples each of the %d processes gets: "
                       "using %d (the reference would train 0 steps)", batch_size, share, env.world_size, share)
        batch_size = share
    return build_loader(dataset, batch_size, train=True, rank=env.rank, world_size=env.world_size,
                        seed=int(config["seed"]), num_workers=_workers(config), collate_fn=collate)


def eval_loader(evalset: EvalSet, batch_size: int, config: Mapping, env: DistEnv) -> DataLoader:
    """An evaluation loader over this process's shard, in file order."""
    return build_loader(evalset.dataset, batch_size, train=False, rank=env.rank, world_size=env.world_size,
                        seed=int(config["seed"]), num_workers=_workers(config), collate_fn=evalset.collate,
                        shard_eval=True)


def _workers(config: Mapping) -> int:
    return int((config.get("run") or {}).get("num_workers", 0) or 0)


def shard_indices(loader: DataLoader) -> list[int]:
    """Dataset indices of this process's evaluation shard, in the order its batches come."""
    sampler = loader.sampler
    if hasattr(sampler, "indices"):
        return sampler.indices()
    return list(range(len(loader.dataset)))


def gather_by_key(pairs: Iterable[tuple]) -> dict:
    """Merge ``(key, value)`` pairs from every process into one dict (padding duplicates collapse)."""
    merged = {}
    for part in all_gather_object(list(pairs)):
        merged.update(part)
    return merged


@torch.no_grad()
def classification_accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Accuracy (%) of ``model.logits(**batch)`` against the batches' ``targets`` over the whole evaluation set."""
    predictions, labels = [], []
    for batch in loader:
        batch = move_to_device(batch, device)
        targets = batch.pop("targets")
        predictions += model.logits(**batch).argmax(dim=-1).tolist()
        labels += targets.tolist()
    indices = shard_indices(loader)
    if len(indices) != len(predictions):
        raise RuntimeError(f"evaluation shard has {len(indices)} indices but {len(predictions)} predictions")
    merged = gather_by_key(zip(indices, zip(predictions, labels)))
    if len(merged) != len(loader.dataset):
        raise RuntimeError(f"evaluation covered {len(merged)} of {len(loader.dataset)} examples")
    pairs = [merged[i] for i in range(len(loader.dataset))]
    return accuracy([p for p, _ in pairs], [y for _, y in pairs])


class LanguageEvaluation:
    """Evaluates the selection split and every test language: ``{'val_acc', 'test_<lang>_acc', ...}``."""

    def __init__(self, run: Run, data: TaskData, score: Callable[[nn.Module, DataLoader, torch.device], float],
                 batch_size: int):
        if score is None:
            raise ValueError("LanguageEvaluation: the task gives no score function")
        if isinstance(data.selection, str) and data.selection not in data.tests:
            raise ValueError(f"selection language {data.selection!r} has no test set")
        self.run, self.data, self.score, self.batch_size = run, data, score, batch_size
        self.predictions_dir = run.output_dir / "predictions"

    def __call__(self, model: nn.Module) -> dict[str, float]:
        """The metrics (percentages) of ``model`` (already in eval mode, no grad).

        A scorer that keeps its ``last_predictions`` (xGQA's answers by question id) has those of every test language
        written to ``output_dir/predictions/<epoch_E | evaluate>/test_<lang>.json``."""
        trainer = self.run.trainer
        tag = "evaluate" if trainer is None else f"epoch_{trainer.evaluating_epoch}"
        metrics = {}
        if isinstance(self.data.selection, EvalSet):
            metrics[SELECTION] = self._score(model, self.data.selection)
        for lang, evalset in self.data.tests.items():
            metrics[f"test_{lang}_{METRIC}"] = self._score(model, evalset)
            predictions = getattr(self.score, "last_predictions", None)
            if predictions is not None and self.run.env.is_main:
                write_predictions(self.predictions_dir / tag / f"test_{lang}.json", predictions)
        if isinstance(self.data.selection, str):
            metrics[SELECTION] = metrics[f"test_{self.data.selection}_{METRIC}"]
        return metrics

    def _score(self, model: nn.Module, evalset: EvalSet) -> float:
        # A loader per evaluation: its workers end with it instead of idling between epochs (one set per language).
        loader = eval_loader(evalset, self.batch_size, self.run.config, self.run.env)
        return self.score(model, loader, self.run.env.device)


def keep_best_predictions(predictions_dir: Path, epoch: int) -> None:
    """Copy the chosen epoch's prediction files to ``predictions/best`` (when the scorer wrote any)."""
    source = predictions_dir / f"epoch_{epoch}"
    if source.is_dir():
        shutil.copytree(source, predictions_dir / "best", dirs_exist_ok=True)


@dataclass
class UnderstandingTask(TaskKind):
    """A thin task script: the model name, its title, how to build its data and how to score a loader."""

    model_name: str
    title: str
    build: Callable[[dict, Path, object, DistEnv], TaskData]   # (config, data root, tokenizer, env)
    score: Callable[[nn.Module, DataLoader, torch.device], float] | None = None
    train_batch_key: str = "batch_size"  # config key of the per-process training batch
    test_batch_key: str = "batch_size_test"

    def build_data(self, run: Run) -> TaskData:
        return self.build(run.config, run.root, run.tokenizer, run.env)

    def evaluator(self, run: Run, data: TaskData) -> LanguageEvaluation:
        train_bs = int(run.config[self.train_batch_key])
        return LanguageEvaluation(run, data, data.score or self.score,
                                  int(run.config.get(self.test_batch_key) or train_bs))

    def selection(self, data: TaskData) -> str:
        return SELECTION

    def training(self, run: Run, data: TaskData, model: nn.Module) -> Training:
        if data.train is None:
            raise UserError(f"{run.info.name}: no training data was built")
        loader = train_loader(data.train, data.train_collate, int(run.config[self.train_batch_key]), run.config,
                              run.env)
        if len(loader) == 0:
            raise UserError(f"{run.info.name}: the training loader yields no batch ({len(data.train)} examples)")

        def batches(epoch: int, skip: int):
            set_loader_epoch(loader, epoch, skip)
            return loader

        return Training(len(loader), batches)

    def results(self, run: Run, data: TaskData, outcome: Outcome) -> dict:
        if outcome.evaluate_only:
            chosen, note = {"best_epoch": None, SELECTION: outcome.metrics[SELECTION]}, \
                "Accuracy (%) of the model as loaded (--evaluate)."
        else:
            best = outcome.best or outcome.last
            chosen = {"best_epoch": best["epoch"], SELECTION: best["metrics"][SELECTION],
                      "last": {"epoch": outcome.last["epoch"], **outcome.last["metrics"]}}
            note = f"Accuracy (%) at the epoch chosen on {data.selection_note()}."
            logger.info("best epoch %d (%s %.2f on %s)", best["epoch"], SELECTION, chosen[SELECTION],
                        data.selection_note())
            keep_best_predictions(run.output_dir / "predictions", best["epoch"])
        rows = {lang: {METRIC: outcome.metrics[f"test_{lang}_{METRIC}"]} for lang in data.tests}
        extra = {"protocol": data.protocol, "selection": data.selection_note(), **chosen,
                 "test_files": {lang: s.path for lang, s in data.tests.items()}, **data.facts}
        payload = write_task_results(run, rows, METRIC, self.title, note, extra)
        logger.info("results: %s", " ".join(f"{lang} {m[METRIC]:.2f}" for lang, m in rows.items()))
        return payload
