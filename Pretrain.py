#!/usr/bin/env python3
"""CCLM pre-training (3M: image-text + parallel text; 4M: + regions).

Every iteration does one optimiser update on a parallel-text batch, then one on an image batch or (4M) a region batch,
chosen with probability ``region_prob`` (0.5), and the learning-rate schedule advances once, as in the original.
Unlike the original, the image batch is only read when an image step is chosen (the original read it and threw it
away on region steps), and no double step is done at step 0. The streams are endless; an "epoch" is
``train_dataset_size / (images.batch_size x processes)`` iterations. Resume restores each stream's position.
Run: ``python3 run.py --task pretrain_cclm_4m --dist 1`` (or this file under torchrun, or ``main(argv)``).
"""
from __future__ import annotations

import logging
import math
import random
from typing import Iterator

from dataset.pretrain import build_pretrain_loaders
from dataset.shards import derived_seed
from dataset.tokenizer import load_tokenizer
from models.factory import create_model
from utils.cli import TaskSpec, run_script, setup_run
from utils.dist import all_gather_object, cleanup_distributed
from utils.engine import StepContext, Trainer
from utils.results import write_results
from utils.task import load_starting_weights, prepare_text_encoder, resolve_data_root

logger = logging.getLogger("pretrain")

SPEC = TaskSpec("pretrain", "configs/Pretrain_4m.yaml", "configs/base/pretrain.yaml",
                bs_keys=("images.batch_size", "texts_para.batch_size", "regions.batch_size",
                         "images_mono.batch_size"),
                unsupported_flags={"evaluate": "pre-training has no evaluation; evaluate a fine-tuning task with "
                                               "--checkpoint <output_dir>/model_state_epoch_E.th",
                                   "fewshot": "few-shot runs fine-tune a downstream task",
                                   "gmt": "translate-test applies to xvnli, xflickrco and wit"})

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
        self.positions = self._own_positions(saved or {})
        self.loaders = build_pretrain_loaders(self.config, self.tokenizer, self.env.rank, self.env.world_size,
                                              self.seed, positions={k: tuple(v) for k, v in self.positions.items()},
                                              root=self.root, repeat=False)
        if "images" not in self.loaders:
            raise ValueError("pre-training config: train_file lists no image-text data")
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
                raise ValueError(f"pre-training source {name!r} gave no batch in pass {epoch} on rank "
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
    size = int(config.get("train_dataset_size") or 0)
    if size <= 0:
        raise ValueError("pre-training config: train_dataset_size must be the number of image-text samples per epoch")
    return math.ceil(size / (int(config["images"]["batch_size"]) * world_size))


def train_on_streams(config: dict, env, model, output_dir, train_step, title: str, task: str,
                     extra: dict | None = None) -> dict:
    """Train ``model`` with ``train_step`` on the config's data streams (resuming if asked) and write results.json/md
    (the last logging window's mean losses); returns those rows."""
    root = resolve_data_root(config)
    tokenizer = load_tokenizer(config["text_encoder"])
    streams = PretrainStreams(config, tokenizer, env, int(config["seed"]), root)
    n_steps = steps_per_epoch(config, env.world_size)
    trainer = Trainer(config, env, model, output_dir=output_dir, steps_per_epoch=n_steps,
                      train_batches=streams.epoch_batches(n_steps), init_params=model.init_params,
                      train_step=train_step, extra_state=streams.state)
    if config.get("resume"):
        trainer.resume(config["resume"])
    streams.start(trainer.resumed_extra)
    trainer.fit()
    rows = {"final": {**trainer.last_train_means, "steps": trainer.state.step}}
    if env.is_main:
        write_results(output_dir, rows, primary="steps", title=title, iglue=False, row_name="window",
                      note="Mean training losses over the last logging window.",
                      extra={"task": task, "epochs": trainer.epochs, "steps_per_epoch": n_steps, **(extra or {})})
    return rows


def build_model(name: str, config: dict):
    """The text encoder prepared (downloaded or made from text_config), then the model and its starting weights."""
    root = resolve_data_root(config)
    config["text_encoder"] = prepare_text_encoder(config, root)
    model = create_model(name, config, root=root)
    load_starting_weights(model, config)
    return model


def main(argv=None) -> dict:
    run = setup_run(SPEC, argv, "CCLM pre-training")
    try:
        model = build_model("cclm_pretrain", run.config)
        return train_on_streams(run.config, run.env, model, run.output_dir, pretrain_step, "Pre-training", "pretrain")
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    run_script(main)
