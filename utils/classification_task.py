"""What the understanding tasks (XVNLI.py, GQA.py, NLVR.py) share: per-language evaluation sets, tokenising collates,
sharded exact scoring, the evaluation schedule, model selection on the English dev set, and the whole run.

A task script says which data (``build_data`` -> :class:`TaskData`), which model (a ``create_model`` name) and how
to score a loader (``score(model, loader, device) -> percentage``); :func:`run_understanding_task` does the rest:

* zero-shot (IGLUE): train on English, evaluate the selection split (English dev) and every test language at the
  due epochs (``start_eval``, ``eval_interval``, and always the last one); the reported row of each language is its
  test accuracy at the epoch with the best selection accuracy (earliest on ties), as the reference reported it;
* few-shot (``--fewshot``): train on the target language's few-shot file; its test set is both the selection split
  and the only row (the reference's protocol: IGLUE has no few-shot dev set, spec 11 B2); the last evaluation is kept
  in ``results.json`` too;
* ``--evaluate``: one evaluation of the model as loaded (``--checkpoint``), no training.

Evaluation loaders are split over processes and the results gathered per example index (or question id), so the
padding of the last shard never counts twice (the reference's padded dev accuracy did, spec 11 B11). A training batch
larger than a process's share of a small few-shot set is capped to that share (the reference then trained 0 steps,
spec 11 B1), and the schedule spans the steps the loader really yields.
"""
from __future__ import annotations

import glob
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from utils.cli import TaskSpec, setup_run
from utils.data import build_loader, set_loader_epoch
from utils.dist import DistEnv, all_gather_object, barrier, cleanup_distributed
from utils.engine import Trainer, move_to_device
from utils.metrics import accuracy
from utils.precision import autocast_context, resolve_precision
from utils.results import SOURCE_LANGUAGES, write_predictions, write_results

logger = logging.getLogger(__name__)

LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}$")
SELECTION = "val_acc"          # the metric the best epoch is chosen on
METRIC = "acc"                 # the column of results.json / results.md


# --------------------------------------------------------------------------------------------- text

def tokenize(tokenizer, texts: Sequence[str], max_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of ``texts`` padded to the longest; truncated at ``max_tokens`` when it is given."""
    if max_tokens:
        out = tokenizer(list(texts), padding="longest", truncation=True, max_length=int(max_tokens),
                        return_tensors="pt")
    else:
        out = tokenizer(list(texts), padding="longest", return_tensors="pt")
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


# --------------------------------------------------------------------------------------------- data

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


def as_list(value, key: str) -> list[str]:
    """A config value that may be one path or a list of paths, as a non-empty list."""
    items = [value] if isinstance(value, (str, Path)) else list(value or [])
    if not items:
        raise ValueError(f"config key {key!r} names no file")
    return [str(v) for v in items]


def existing_file(root: Path, relative: str | Path, key: str) -> Path:
    """``root / relative``, which must be a file (the error names the config key and the path)."""
    path = Path(root) / relative
    if not path.is_file():
        raise FileNotFoundError(f"config key {key!r}: {path} does not exist")
    return path


def language_files(root: Path, template: str, languages: Iterable[str] | None, key: str = "test_file"
                   ) -> dict[str, Path]:
    """Language -> file for a ``{lang}`` template under ``root``.

    ``languages`` None: every language code (2-3 lowercase letters) that has a file, English first; otherwise exactly
    those languages, each file required.
    """
    if "{lang}" not in template:
        raise ValueError(f"config key {key!r}: {template!r} has no {{lang}} placeholder")
    if languages is not None:
        return {lang: existing_file(root, template.format(lang=lang), key) for lang in languages}
    full = (Path(root) / template).as_posix()  # an absolute template stays as it is
    pattern = re.compile(re.escape(full).replace(re.escape("{lang}"), "(?P<lang>[^/]+)") + "$")
    found = {}
    for name in sorted(glob.glob(glob.escape(full).replace(glob.escape("{lang}"), "*"))):
        match = pattern.match(Path(name).as_posix())
        if match and LANGUAGE_CODE.match(match["lang"]) and Path(name).is_file():
            found[match["lang"]] = Path(name)
    if not found:
        raise FileNotFoundError(f"config key {key!r}: no file matches {Path(root) / template} for any language")
    return dict(sorted(found.items(), key=lambda item: (item[0] not in SOURCE_LANGUAGES, item[0])))


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


# --------------------------------------------------------------------------------------------- scoring

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


# --------------------------------------------------------------------------------------------- evaluation

def is_due(epoch: int, start_eval: int, eval_interval: int) -> bool:
    """Whether the end of ``epoch`` (0-based) is an evaluation point of the reference schedule."""
    return epoch >= start_eval and (epoch + 1) % max(1, eval_interval) == 0


def best_epoch(history: Mapping[int, Mapping[str, float]]) -> int:
    """The evaluated epoch with the highest selection accuracy (the earliest on ties, as the best checkpoint)."""
    scored = [e for e in sorted(history) if SELECTION in history[e]]
    if not scored:
        raise RuntimeError(f"no evaluated epoch has a {SELECTION!r}")
    return max(scored, key=lambda e: (history[e][SELECTION], -e))


class LanguageEvaluation:
    """Evaluates the selection split and every test language; keeps the history of the evaluated epochs."""

    def __init__(self, data: TaskData, score: Callable[[nn.Module, DataLoader, torch.device], float],
                 config: Mapping, env: DistEnv, batch_size: int):
        if score is None:
            raise ValueError("LanguageEvaluation: the task gives no score function")
        if isinstance(data.selection, str) and data.selection not in data.tests:
            raise ValueError(f"selection language {data.selection!r} has no test set")
        self.data, self.score, self.config, self.env, self.batch_size = data, score, config, env, batch_size
        self.start_eval = int(config.get("start_eval", 0) or 0)
        self.eval_interval = int(config.get("eval_interval", 1) or 1)
        self.history: dict[int, dict[str, float]] = {}
        self.trainer: Trainer | None = None
        self.predictions_dir = Path(config.get("output_dir") or ".") / "predictions"

    def evaluate(self, model: nn.Module, tag: str = "evaluate") -> dict[str, float]:
        """``{'val_acc', 'test_<lang>_acc', ...}`` (percentages) of ``model`` (already in eval mode, no grad).

        A scorer that keeps its ``last_predictions`` (xGQA's answers by question id) has those of every test language
        written to ``output_dir/predictions/<tag>/test_<lang>.json``."""
        metrics = {}
        if isinstance(self.data.selection, EvalSet):
            metrics[SELECTION] = self._score(model, self.data.selection)
        for lang, evalset in self.data.tests.items():
            metrics[f"test_{lang}_{METRIC}"] = self._score(model, evalset)
            predictions = getattr(self.score, "last_predictions", None)
            if predictions is not None and self.env.is_main:
                write_predictions(self.predictions_dir / tag / f"test_{lang}.json", predictions)
        if isinstance(self.data.selection, str):
            metrics[SELECTION] = metrics[f"test_{self.data.selection}_{METRIC}"]
        return metrics

    def _score(self, model: nn.Module, evalset: EvalSet) -> float:
        # A loader per evaluation: its workers end with it instead of idling between epochs (one set per language).
        return self.score(model, eval_loader(evalset, self.batch_size, self.config, self.env), self.env.device)

    def current_epoch(self) -> int:
        """The epoch the trainer just finished (or stopped in, with run.max_steps)."""
        state = self.trainer.state
        return state.epoch if state.batches_in_epoch else state.epoch - 1

    def _finishing(self) -> bool:
        t = self.trainer
        return t.state.epoch >= t.epochs or bool(t.max_steps and t.state.step >= int(t.max_steps))

    def for_trainer(self, model: nn.Module) -> dict[str, float]:
        """The Trainer's evaluate function: evaluates at the due epochs and the last one, {} otherwise."""
        epoch = self.current_epoch()
        if not (is_due(epoch, self.start_eval, self.eval_interval) or self._finishing()):
            return {}
        metrics = self.evaluate(model, tag=f"epoch_{epoch}")
        self.history[epoch] = metrics
        return metrics

    def state(self) -> dict:
        """What a checkpoint keeps, so that a resumed run still reports the best epoch."""
        return {"history": {int(k): dict(v) for k, v in self.history.items()}}

    def restore(self, extra: Mapping) -> None:
        self.history = {int(k): dict(v) for k, v in (extra.get("history") or {}).items()}

    def best_epoch(self) -> int:
        return best_epoch(self.history)

    def rows(self, metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
        """results rows: language -> {'acc': test accuracy}."""
        return {lang: {METRIC: metrics[f"test_{lang}_{METRIC}"]} for lang in self.data.tests}


def keep_best_predictions(predictions_dir: Path, epoch: int) -> None:
    """Copy the chosen epoch's prediction files to ``predictions/best`` (when the scorer wrote any)."""
    source = predictions_dir / f"epoch_{epoch}"
    if source.is_dir():
        shutil.copytree(source, predictions_dir / "best", dirs_exist_ok=True)


def evaluate_once(evaluation: LanguageEvaluation, model: nn.Module, config: Mapping, env: DistEnv) -> dict:
    """One evaluation outside the training loop (eval mode, no grad, the run's precision)."""
    model.to(env.device).eval()
    with torch.no_grad(), autocast_context(resolve_precision(config, env.device), env.device):
        return evaluation.evaluate(model)


# --------------------------------------------------------------------------------------------- the run

@dataclass
class UnderstandingTask:
    """A thin task script: the set-up spec, the model name, how to build its data and how to score a loader."""

    spec: TaskSpec
    model_name: str
    title: str
    build_data: Callable[[dict, Path, object, DistEnv], TaskData]   # (config, data root, tokenizer, env)
    score: Callable[[nn.Module, DataLoader, torch.device], float] | None = None
    train_batch_key: str = "batch_size"  # config key of the per-process training batch
    test_batch_key: str = "batch_size_test"


def run_understanding_task(task: UnderstandingTask, argv: Iterable[str] | None = None) -> dict:
    """Set up, build data and model, train (unless --evaluate), select the best epoch, write results; returns the
    results.json payload (on every process)."""
    from dataset.tokenizer import load_tokenizer
    from models.factory import create_model
    from utils.task import load_starting_weights, prepare_text_encoder, resolve_data_root

    run = setup_run(task.spec, argv, task.title)
    config, env = run.config, run.env
    # The collates tokenise in loader workers forked after the main process has tokenised (xGQA's answer list).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        root = resolve_data_root(config)
        config["text_encoder"] = prepare_text_encoder(config, root)
        tokenizer = load_tokenizer(config["text_encoder"])
        data = task.build_data(config, root, tokenizer, env)
        model = create_model(task.model_name, config, root=root)
        load_starting_weights(model, config)
        train_bs = int(config[task.train_batch_key])
        evaluation = LanguageEvaluation(data, data.score or task.score, config, env,
                                        int(config.get(task.test_batch_key) or train_bs))
        if config.get("evaluate"):
            metrics = evaluate_once(evaluation, model, config, env)
            best, last = {"best_epoch": None, SELECTION: metrics[SELECTION]}, None
        else:
            best, last = _train(task, config, env, run.output_dir, model, data, evaluation, train_bs)
            metrics = evaluation.history[best["best_epoch"]]
        rows = evaluation.rows(metrics)
        extra = {"task": task.spec.name, "protocol": data.protocol, "fewshot": config.get("fewshot"),
                 "translate_test": bool(config.get("gmt")),
                 "checkpoint": config.get("checkpoint"), "selection": _selection_note(data), **best,
                 "test_files": {lang: s.path for lang, s in data.tests.items()}, **data.facts}
        if last is not None:
            extra["last"] = last
        payload = {"languages": rows, "extra": extra}
        if env.is_main:
            note = ("Accuracy (%) of the model as loaded (--evaluate)." if config.get("evaluate") else
                    f"Accuracy (%) at the epoch chosen on {_selection_note(data)}.")
            payload = write_results(run.output_dir, rows, primary=METRIC, extra=extra, title=task.title, note=note)
            logger.info("results: %s", " ".join(f"{lang} {m[METRIC]:.2f}" for lang, m in rows.items()))
        barrier()
        return payload
    finally:
        cleanup_distributed()


def _train(task: UnderstandingTask, config: dict, env: DistEnv, output_dir: Path, model: nn.Module, data: TaskData,
           evaluation: LanguageEvaluation, batch_size: int) -> tuple[dict, dict]:
    """Train with the shared engine; (best epoch and its selection accuracy, the last evaluation)."""
    if data.train is None:
        raise ValueError(f"{task.spec.name}: no training data was built")
    loader = train_loader(data.train, data.train_collate, batch_size, config, env)
    if len(loader) == 0:
        raise ValueError(f"{task.spec.name}: the training loader yields no batch ({len(data.train)} examples)")

    def batches(epoch: int, skip: int):
        set_loader_epoch(loader, epoch, skip)
        return loader

    trainer = Trainer(config, env, model, output_dir=output_dir, steps_per_epoch=len(loader), train_batches=batches,
                      evaluate=evaluation.for_trainer, primary_metric=SELECTION, init_params=model.init_params,
                      extra_state=evaluation.state)
    evaluation.trainer = trainer
    if config.get("resume"):
        trainer.resume(config["resume"])
        evaluation.restore(trainer.resumed_extra)
    trainer.fit()
    epoch = evaluation.best_epoch()
    last_epoch = max(evaluation.history)
    best = {"best_epoch": epoch, SELECTION: evaluation.history[epoch][SELECTION]}
    last = {"epoch": last_epoch, **evaluation.history[last_epoch]}
    logger.info("best epoch %d (%s %.2f on %s)", epoch, SELECTION, best[SELECTION], _selection_note(data))
    if env.is_main:
        keep_best_predictions(evaluation.predictions_dir, epoch)
    return best, last


def _selection_note(data: TaskData) -> str:
    if isinstance(data.selection, str):
        return f"the {data.selection} test set (reference few-shot protocol: no held-out split)"
    return data.selection.path
