#!/usr/bin/env python3
"""XVNLI (IGLUE visual entailment): does the image entail, contradict or leave open the hypothesis?

Data: IGLUE's XVNLI jsonl (image key ``Flikr30kID``; hypothesis ``sentence2``; the text premise is unused); lines whose
gold label is ``-`` are dropped and counted per file (log and ``results.json`` extra ``dropped_without_gold_label``).
Model: ``cclm_classification`` (3-way ``cls_head`` on the fused CLS), cross-entropy.
Zero-shot: train on English ``train_file``, choose the best epoch on the English ``val_file`` (as the reference), report
every test language at that epoch (``test_languages``: ar/es/fr/ru + en; null = whatever the data has).
Few-shot (``--fewshot ar,48``): train on ``<lang>/train_<N>.jsonl``, evaluate and select on ``<lang>/test.jsonl`` (the
reference's protocol: the test set is also the selection set, docs/protocols.md#few-shot-selection).
Translate-test (``--gmt``): the test languages but English from ``annotations_machine-translate/<lang>/test.jsonl``.
Run: ``python3 run.py --task xvnli --dist 1 --checkpoint cclm.th`` (or this file under torchrun, or ``main(argv)``).
"""
from __future__ import annotations

import logging
from pathlib import Path

from torch.utils.data import ConcatDataset

from dataset.fewshot import resolve_fewshot
from dataset.transforms import build_transform
from dataset.xvnli import XVNLIDataset
from tasks.cli import key_of_test_files
from tasks.files import as_list, existing_file, language_files
from tasks.runner import run_script, run_task
from tasks.understanding import ClassificationCollate, EvalSet, TaskData, UnderstandingTask, classification_accuracy

logger = logging.getLogger("xvnli")


class XVNLIFiles:
    """Reads XVNLI files with one transform each, counting the lines dropped for want of a gold label."""

    def __init__(self, config: dict, root: Path):
        self.image_root = Path(root) / config["image_root"]
        self.max_words = int(config["max_words"])
        self.dropped: dict[str, int] = {}

    def read(self, paths: list[Path], transform, name: str):
        parts = [XVNLIDataset(path, self.image_root, transform, self.max_words) for path in paths]
        self.dropped[name] = sum(p.dropped for p in parts)
        if self.dropped[name]:
            logger.info("%s: dropped %d line(s) without a gold label (%s)", name, self.dropped[name],
                        ", ".join(str(p) for p in paths))
        return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def build_data(config: dict, root: Path, tokenizer, env) -> TaskData:
    """English train/dev and every test language, or the few-shot files of ``--fewshot <lang>,<N>``."""
    res = int(config["image_res"])
    files = XVNLIFiles(config, root)
    test_transform = build_transform("test", res)
    eval_collate = ClassificationCollate(tokenizer)  # padding to the longest, no truncation
    train = None
    if config.get("fewshot"):
        few = resolve_fewshot("xvnli", config["fewshot"], root)
        tests = {few.language: EvalSet(files.read([few.eval_file], test_transform, f"test_{few.language}"),
                                       eval_collate, str(few.eval_file))}
        selection, protocol, train_paths = few.language, f"few-shot {few.language},{few.shots}", [few.train_file]
    else:
        key = key_of_test_files(config)
        by_language = language_files(config[key], config.get("test_languages"), root, key)
        tests = {lang: EvalSet(files.read([path], test_transform, f"test_{lang}"), eval_collate, str(path))
                 for lang, path in by_language.items()}
        val_paths = [existing_file(root, p, "val_file") for p in as_list(config["val_file"], "val_file")]
        selection = EvalSet(files.read(val_paths, test_transform, "val"), eval_collate,
                            ", ".join(map(str, val_paths)))
        protocol = "zero-shot"
        train_paths = as_list(config["train_file"], "train_file")
    if not config.get("evaluate"):
        train_paths = [existing_file(root, p, "train_file") for p in train_paths]
        train = files.read(train_paths, build_transform("train", res), "train")
    return TaskData(tests=tests, selection=selection, train=train,
                    train_collate=ClassificationCollate(tokenizer, max_tokens=config["max_tokens"]),
                    protocol=protocol, facts={"dropped_without_gold_label": files.dropped})


TASK = UnderstandingTask("cclm_classification", "XVNLI accuracy", build_data, classification_accuracy)


def main(argv=None) -> dict:
    """Run XVNLI with command-line flags ``argv``; returns the results payload (rank 0)."""
    return run_task(TASK, "XVNLI.py", argv)


if __name__ == "__main__":
    run_script(main)
