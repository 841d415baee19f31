#!/usr/bin/env python3
"""Multi30K and MSCOCO image-text retrieval (``itr_multi30k``, ``itr_coco``): ITC + ITM fine-tuning, two-stage
evaluation of every language.

Data: the retrieval json of ``dataset.retrieval`` (train: one caption per entry; val/test: caption lists per image),
``benchmark`` (multi30k | coco) names the few-shot protocol. Configs (configs/retrieval/): ``multi30k_all`` /
``coco_all`` train on every language; ``*_en`` on English only and test every language (zero-shot cross-lingual);
``multi30k_{cs,de,fr}``, ``coco_{ja,zh}`` on one language; ``*_fewshot`` with ``--fewshot <lang>,<N>`` (the first N
images of the language's training file: our extension, the reference has no few-shot mode here).

Selection: the reference chose the best epoch on the summed **test** r_mean of every configured language
(docs/protocols.md#retrieval-selection). Here it is the mean validation r_mean of ``selection.languages`` (English for the zero-shot
configs, every training language otherwise); ``--opts selection.split=test`` restores the reference's rule.
A few-shot run selects on the target language's validation file.
Run: ``python3 run.py --task itr_multi30k --dist 1 --checkpoint cclm_4m.th --output_dir out/m30k`` (or ``main(argv)``).
"""
from __future__ import annotations

from pathlib import Path

from dataset.fewshot import resolve_fewshot
from tasks.retrieval import RetrievalTask
from tasks.retrieval_data import RetrievalData, load_fewshot_data, load_standard_data
from tasks.runner import run_script, run_task
from utils.config import ConfigError
FEWSHOT_TASKS = {"multi30k": "itr_multi30k", "coco": "itr_coco"}


def load_data(config: dict, root: Path) -> RetrievalData:
    """Multi30K / COCO json, or the few-shot subset of one language."""
    if not config.get("fewshot"):
        return load_standard_data("caption_json", config, root)
    benchmark = config.get("benchmark")
    if benchmark not in FEWSHOT_TASKS:
        raise ConfigError(f"config 'benchmark' must be one of {sorted(FEWSHOT_TASKS)} for --fewshot, got {benchmark!r}")
    files = resolve_fewshot(FEWSHOT_TASKS[benchmark], config["fewshot"], root)
    return load_fewshot_data("caption_json", config, root, files)


TASK = RetrievalTask("Image-text retrieval (Multi30K / MSCOCO)", load_data, iglue=False)


def main(argv=None) -> dict:
    """Run with command-line flags ``argv``; returns the results.json payload (rank 0)."""
    return run_task(TASK, "Retrieval.py", argv)


if __name__ == "__main__":
    run_script(main)
