#!/usr/bin/env python3
"""Reproduce the paper's zero-shot table: every benchmark run from a checkpoint, our numbers beside the paper's.

The benchmarks (configs/reproduce/cclm_4m.yaml): XVNLI, xGQA, MaRVL, xFlickr&CO and WIT (IGLUE), Multi30K and MSCOCO.
``--checkpoint`` is the pre-trained checkpoint (each benchmark fine-tunes on English from it and tests every language)
or a folder holding it (``pretrained_name``) and, optionally, fine-tuned checkpoints
``<benchmark>/checkpoint_best.pth``, which are evaluated instead of fine-tuning. Before any work every input is
checked; ``--dry-run-data`` only lists what each benchmark needs, what is missing and where it comes from
(``inputs.md``). Each benchmark runs through
``run.py`` with as many processes as this run (one node) into ``<output_dir>/<benchmark>``; ``results.json`` and
``results.md`` put our numbers beside the paper's (configs/paper/cclm.yaml), each row within or outside the tolerance.
Run: ``python3 run.py --task reproduce --checkpoint cclm_4m_epoch_29.th [--dry-run-data]``.
"""
from __future__ import annotations

import logging
import os
import sys

from tasks.cli import build_config, task_parser
from tasks.registry import task_info
from tasks.reproduce import BenchmarkFailed, reproduce
from tasks.runner import run_script
from utils.logging import setup_logging

logger = logging.getLogger("reproduce")


def main(argv=None) -> dict:
    """Check the inputs and (unless ``--dry-run-data``) run and compare every benchmark; rank 0 does it all."""
    info = task_info("reproduce")
    args = task_parser(info, [info.name], __doc__.splitlines()[0]).parse_args(
        None if argv is None else list(argv))
    if int(os.environ.get("RANK", 0)) != 0:
        return {}  # the benchmarks start their own processes
    config = build_config(info, args, world_size=1)
    setup_logging(config["output_dir"])
    try:
        return reproduce(config, args)
    except BenchmarkFailed as e:
        logger.error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    run_script(main)
