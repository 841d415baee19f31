"""The stream-training task kind (Pretrain.py, NLVR_pretrain.py): endless, resumable data streams of the
pre-training formats, one optimiser update per batch, no evaluation; results are the last logging window's mean
losses.

Every iteration draws which streams it uses, identically on every rank and after a resume (pre-training: one
parallel-text batch, then an image batch or, with probability ``region_prob``, a region batch). The streams are
endless; an "epoch" is ``train_dataset_size / (images.batch_size x processes)`` iterations.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import Callable, Iterator

from dataset.pretrain import build_pretrain_loaders
from dataset.shards import derived_seed
from tasks.runner import Outcome, Run, TaskKind, Training, write_task_results
from utils.config import ConfigError
from utils.dist import all_gather_object
from utils.engine import StepContext

logger = logging.getLogger(__name__)

# Stream name -> the prefix of its losses in logs (the original's meter names: loss_tt_ttc, loss_mm_img_itc, ...).
LOSS_PREFIX = {"texts_para": "tt", "images": "mm_img", "regions": "mm", "images_mono": "mono"}


class PretrainStreams:
    """The per-source loaders, each an endless chain of passes over its files, and their resumable positions.

    A position is (pass, batches consumed in that pass) per source and per rank (ranks read different byte ranges,
    so their passes can end at different iterations). Checkpoints store every rank's positions; a resumed rank skips
    at most one pass of raw lines.
    """

    def __init__(self, config: dict, tokenizer, env, seed: int, root):
        self.config, self.tokenizer, self.env, self.seed, self.root = config, tokenizer, env, seed, root
        self.loaders: dict = {}
        self.iterators: dict[str, Iterator] = {}
        self.positions: dict[str, list[int]] = {}  # name -> [pass, batches consumed in it]

    def start(self, saved: dict | None = None) -> None:
        """Open the loaders at the saved positions (``{}``: from the start)."""
        self.positions = self._own_positions(saved or {})
        self.loaders = build_pretrain_loaders(self.config, self.tokenizer, self.env.rank, self.env.world_size,
                                              self.seed, positions={k: tuple(v) for k, v in self.positions.items()},
                                              root=self.root, repeat=False)
        if "images" not in self.loaders:
            raise ConfigError("pre-training config: train_file lists no image-text data")
        for name in self.loaders:
            self.positions.setdefault(name, [0, 0])
        self.iterators = {name: iter(loader) for name, loader in self.loaders.items()}

    def _own_positions(self, saved: dict) -> dict[str, list[int]]:
        per_rank = saved.get("positions_per_rank")
        if not per_rank:
            return {}
        if len(per_rank) == self.env.world_size:
            return {k: list(v) for k, v in per_rank[self.env.rank].items()}
        # Another number of processes splits the data differently: continue at the start of the next pass.
        next_pass = {name: max(p[name][0] for p in per_rank if name in p) + 1 for name in per_rank[0]}
        logger.warning("resuming %d saved processes' data positions with %d processes: the data restarts at the "
                       "next pass of each source (%s)", len(per_rank), self.env.world_size, next_pass)
        return {name: [epoch, 0] for name, epoch in next_pass.items()}

    def state(self) -> dict:
        """Every rank's positions (a collective call: all ranks must make it)."""
        return {"positions_per_rank": all_gather_object({k: list(v) for k, v in self.positions.items()})}

    def next(self, name: str) -> dict:
        try:
            batch = next(self.iterators[name])
        except StopIteration:  # this rank's pass is over: the next pass of the same files, in a new order
            epoch = self.positions[name][0] + 1
            self.positions[name] = [epoch, 0]
            self.loaders[name].dataset.set_epoch(epoch)
            self.iterators[name] = iter(self.loaders[name])
            try:
                batch = next(self.iterators[name])
            except StopIteration:
                raise ConfigError(f"pre-training source {name!r} gave no batch in pass {epoch} on rank "
                                  f"{self.env.rank}: too little data for {self.env.world_size} processes") from None
        self.positions[name][1] += 1
        return batch

    def plan(self, iteration: int) -> list[str]:
        """Which streams iteration ``iteration`` uses, drawn identically on every rank (and after a resume)."""
        rng = random.Random(derived_seed(self.seed, "plan", iteration))
        names = []
        for extra in ("texts_para", "images_mono"):
            if extra in self.loaders and rng.random() < float(self.config[extra].get("iter_perc", 1.0)):
                names.append(extra)
        if "regions" in self.loaders and rng.random() < float(self.config.get("region_prob", 0.5)):
            names.append("regions")
        else:
            names.append("images")
        return names

    def epoch_batches(self, steps_per_epoch: int):
        """The engine's ``train_batches``: per iteration, the list of (stream name, batch) it trains on."""
        def batches(epoch: int, skip: int):
            for i in range(skip, steps_per_epoch):
                yield [(name, self.next(name)) for name in self.plan(epoch * steps_per_epoch + i)]
        return batches


def pretrain_step(ctx: StepContext, item: list) -> None:
    """One optimiser update per batch in the iteration (the original's separate para-text and image steps)."""
    for name, batch in item:
        with ctx.micro_step():
            losses = ctx.model(**batch)
        prefix = LOSS_PREFIX[name]
        ctx.backward({k.replace("loss_", f"loss_{prefix}_", 1): v for k, v in losses.items()})


def steps_per_epoch(config: dict, world_size: int) -> int:
    """Iterations per epoch: ``train_dataset_size`` image-text samples over the global image batch."""
    size = int(config.get("train_dataset_size") or 0)
    if size <= 0:
        raise ConfigError("pre-training config: train_dataset_size must be the number of image-text samples per "
                          "epoch")
    return math.ceil(size / (int(config["images"]["batch_size"]) * world_size))


@dataclass
class StreamTraining(TaskKind):
    """Train ``model_name`` with ``train_step`` on the config's pre-training streams; results are the mean losses of
    the last logging window. ``check`` validates the config before anything is built."""

    title: str
    model_name: str
    train_step: Callable[[StepContext, list], None] = pretrain_step
    check: Callable[[Run], None] | None = None

    def build_data(self, run: Run) -> PretrainStreams:
        if self.check is not None:
            self.check(run)
        return PretrainStreams(run.config, run.tokenizer, run.env, int(run.config["seed"]), run.root)

    def training(self, run: Run, streams: PretrainStreams, model) -> Training:
        n_steps = steps_per_epoch(run.config, run.env.world_size)
        return Training(n_steps, streams.epoch_batches(n_steps), train_step=self.train_step,
                        extra_state=streams.state, on_start=streams.start, facts={"steps_per_epoch": n_steps})

    def results(self, run: Run, data: PretrainStreams, outcome: Outcome) -> dict:
        trainer = outcome.trainer
        rows = {"final": {**trainer.last_train_means, "steps": trainer.state.step}}
        return write_task_results(run, rows, "steps", self.title, "Mean training losses over the last logging window.",
                                  {"epochs": trainer.epochs, **outcome.facts}, iglue=False, row_name="window")
