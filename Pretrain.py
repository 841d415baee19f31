#!/usr/bin/env python3
"""CCLM pre-training (``pretrain_cclm_3m``: image-text + parallel text; ``pretrain_cclm_4m``: + regions).

Data: ``train_file`` (image-caption shards), ``train_file_text`` (translation pairs), 4M also ``train_file_regions``
(boxes with region captions); formats in docs/data-formats.md#pre-training-records.
Every iteration does one optimiser update on a parallel-text batch, then one on an image batch or (4M) a region batch,
chosen with probability ``region_prob`` (0.5), and the learning-rate schedule advances once, as in the original.
Unlike the original, the image batch is only read when an image step is chosen (the original read it and threw it
away on region steps), and no double step is done at step 0 (docs/reference-bugs.md#pretraining-steps). Resume
restores each stream's position.
Model: ``cclm_pretrain`` (ITC, ITM, MLM on image-text; TTC, TTM, MLM on text pairs; box regression on regions).
Run: ``python3 run.py --task pretrain_cclm_4m --dist 1`` (or this file under torchrun, or ``main(argv)``).
"""
from __future__ import annotations

from tasks.pretraining import StreamTraining, pretrain_step
from tasks.runner import run_script, run_task

TASK = StreamTraining("Pre-training", "cclm_pretrain", pretrain_step)


def main(argv=None) -> dict:
    """Run with command-line flags ``argv``; returns the results.json payload (rank 0)."""
    return run_task(TASK, "Pretrain.py", argv)


if __name__ == "__main__":
    run_script(main)
