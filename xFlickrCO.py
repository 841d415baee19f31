#!/usr/bin/env python3
"""xFlickr&CO (IGLUE) image-text retrieval: fine-tune on English Flickr30K, test de/en/es/id/ja/ru/tr/zh.

Data: IGLUE jsonl (``{"sentences", "id", "img_path"}``); test images come from two roots (COCO val2014 files, whose
name contains ``COCO``, and Flickr30K). Same model, loss and two-stage evaluation as Retrieval.py; captions keep 80
words and training text is truncated at ``max_tokens`` (80). Evaluated from ``start_eval`` every ``eval_interval``
epochs (zero-shot 7,8,9; few-shot 9,19,...,59); the best epoch is chosen on English Flickr30K validation r_mean,
as in the reference.

Few-shot (``--fewshot de,100``, configs/xflickrco/xflickrco_fewshot.yaml): train on ``<lang>/train_<N>.jsonl``,
test on ``<lang>/test.jsonl``. IGLUE has no few-shot validation set and the reference selected on that test set
(docs/protocols.md#few-shot-selection); here the last evaluated epoch is reported unless ``fewshot_selection: test``.
Translate-test (``--gmt``): IGLUE's machine-translated ``annotations_machine-translate/{lang}/test_gmt.jsonl``, no en.
Run: ``python3 run.py --task xflickrco --dist 1 --checkpoint cclm_4m.th --output_dir out/xflickrco``.
"""
from __future__ import annotations

from pathlib import Path

from dataset.fewshot import resolve_fewshot
from tasks.retrieval import RetrievalTask
from tasks.retrieval_data import RetrievalData, load_fewshot_data, load_standard_data
from tasks.runner import run_script, run_task


def load_data(config: dict, root: Path) -> RetrievalData:
    """Flickr30K English training / validation and the xFlickr&CO test languages, or a few-shot language."""
    if config.get("fewshot"):
        return load_fewshot_data("xflickrco", config, root, resolve_fewshot("xflickrco", config["fewshot"], root))
    return load_standard_data("xflickrco", config, root)


TASK = RetrievalTask("xFlickr&CO retrieval", load_data)


def main(argv=None) -> dict:
    """Run with command-line flags ``argv``; returns the results.json payload (rank 0)."""
    return run_task(TASK, "xFlickrCO.py", argv)


if __name__ == "__main__":
    run_script(main)
