#!/usr/bin/env python3
"""NLVR2 -> MaRVL (IGLUE): is a statement about a pair of images true?

Data: NLVR2 for English training and selection (X-VLM json lists or NLVR2 jsonl, string labels "True"/"False"); MaRVL
for the other languages (boolean labels), converted from IGLUE's jsonl files by our code before the run
(``dataset.marvl.ensure_marvl``: ``marvl_dir`` -> ``marvl_out``; only missing or outdated files are rewritten).
Model: ``cclm_nlvr`` (both images through the vision encoder, paired fusion layers attending to the left and the right
image with shared cross-attention keys/values, 2-way ``cls_head``), cross-entropy. Each image of a training pair gets
its own random crop/flip/RandAugment, as in the reference (docs/protocols.md#nlvr-augmentation).
Zero-shot: train on NLVR2 train, choose the best epoch on NLVR2 dev (as the reference), report MaRVL
(``test_languages``; null = whatever was converted) and the NLVR2 test set as "en" at that epoch.
Few-shot (``--fewshot id``): train on ``marvl-<lang>_train10x2.json``, evaluate and select on ``marvl-<lang>.json``
(the reference's protocol: the test set is also the selection set, docs/protocols.md#few-shot-selection).
Run: ``python3 run.py --task nlvr --dist 1 --checkpoint cclm.th`` (or this file under torchrun, or ``main(argv)``).
"""
from __future__ import annotations

import logging
from pathlib import Path

from torch.utils.data import ConcatDataset

from dataset.fewshot import resolve_fewshot
from dataset.marvl import ensure_marvl
from dataset.nlvr import NLVRDataset
from dataset.transforms import build_transform
from tasks.files import as_list, existing_file, language_files
from tasks.runner import run_script, run_task
from tasks.understanding import ClassificationCollate, EvalSet, TaskData, UnderstandingTask, classification_accuracy
from utils.dist import barrier

logger = logging.getLogger("nlvr")
IMAGE_KEYS = ("left_image", "right_image")


def prepare_marvl(config: dict, root: Path, env) -> Path:
    """Convert IGLUE's MaRVL files (rank 0; the others wait) and return the folder of the converted files."""
    source, out = Path(root) / config["marvl_dir"], Path(root) / config["marvl_out"]
    if source.is_dir():
        if env.is_main:
            outputs = ensure_marvl(source, out)
            logger.info("MaRVL: %d converted file(s) ready in %s", len(outputs), out)
        barrier()
    elif not any(out.glob("marvl-*.json")):
        raise FileNotFoundError(f"MaRVL: neither IGLUE's files (config key 'marvl_dir': {source}) nor converted ones "
                                f"(config key 'marvl_out': {out}) exist")
    return out


def read(paths, image_root: Path, transform, max_words: int):
    """One NLVR dataset over one or several files."""
    parts = [NLVRDataset(path, image_root, transform, max_words) for path in paths]
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def build_data(config: dict, root: Path, tokenizer, env) -> TaskData:
    """NLVR2 train/dev/test and MaRVL's languages, or the few-shot files of ``--fewshot <lang>``."""
    root = Path(root)
    marvl_out = prepare_marvl(config, root, env)
    res, max_words = int(config["image_res"]), int(config["max_words"])
    nlvr_images, marvl_images = root / config["image_root"], root / config["marvl_image_root"]
    test_transform = build_transform("test", res)
    eval_collate = ClassificationCollate(tokenizer, IMAGE_KEYS)  # padding to the longest, no truncation

    def eval_set(path: Path, image_root: Path) -> EvalSet:
        return EvalSet(read([path], image_root, test_transform, max_words), eval_collate, str(path))

    if config.get("fewshot"):
        few = resolve_fewshot("nlvr", config["fewshot"], root, check_exists=False)
        # the protocol names the reference's data/marvl; the converted files are wherever marvl_out says
        eval_file, train_file = (existing_file(marvl_out, f.name, f"--fewshot {config['fewshot']}")
                                 for f in (few.eval_file, few.train_file))
        tests = {few.language: eval_set(eval_file, marvl_images)}
        selection, protocol = few.language, f"few-shot {few.language},{few.shots}"
        train_paths, train_images = [train_file], marvl_images
    else:
        tests = {}
        if config.get("en_test_file"):
            tests["en"] = eval_set(existing_file(root, config["en_test_file"], "en_test_file"), nlvr_images)
        marvl = language_files(config["test_file"], config.get("test_languages"), root, "test_file")
        tests.update({lang: eval_set(path, marvl_images) for lang, path in marvl.items() if lang != "en"})
        val_paths = [existing_file(root, p, "val_file") for p in as_list(config["val_file"], "val_file")]
        selection = EvalSet(read(val_paths, nlvr_images, test_transform, max_words), eval_collate,
                            ", ".join(map(str, val_paths)))
        protocol, train_images = "zero-shot", nlvr_images
        train_paths = as_list(config["train_file"], "train_file")
    train = None
    if not config.get("evaluate"):
        train_paths = [existing_file(root, p, "train_file") for p in train_paths]
        train = read(train_paths, train_images, build_transform("train", res), max_words)
    return TaskData(tests=tests, selection=selection, train=train,
                    train_collate=ClassificationCollate(tokenizer, IMAGE_KEYS), protocol=protocol)


TASK = UnderstandingTask("cclm_nlvr", "NLVR2 -> MaRVL accuracy", build_data, classification_accuracy)


def main(argv=None) -> dict:
    """Run NLVR2 -> MaRVL with command-line flags ``argv``; returns the results payload."""
    return run_task(TASK, "NLVR.py", argv)


if __name__ == "__main__":
    run_script(main)
