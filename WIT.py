#!/usr/bin/env python3
"""WIT (IGLUE) image-text retrieval: fine-tune on English WIT, test ar/bg/da/el/en/et/id/ja/ko/tr/vi.

Data: IGLUE WIT jsonl with the image as base64 ``image_content`` (``data/wit/annotations-bs64``, CCLM's layout).
When those files are missing and ``wit_preproc`` is set, rank 0 first joins the IGLUE annotations with the Kaggle
pixel files (``dataset.wit.join_wit_images``; IGLUE's zipped ``train_en.jsonl.zip`` is read from its zip), as the
reference's ``wit_preproc`` did; records whose image is in no pixel file are dropped (so test sizes can shrink).
Captions of one image (grouped by ``image_url``) are positives in training and share their image in evaluation.
Evaluated from ``start_eval`` (3) on; the best epoch is chosen on English validation r_mean (``val_en``).

Few-shot (our extension; the reference and IGLUE have none, because IGLUE ships no non-English WIT training data):
``--fewshot <lang>,<N>`` fine-tunes on every caption of the first N images of ``test_<lang>`` and evaluates on the
other images of that file only, reporting the last evaluated epoch. Its numbers are on a smaller test set than the
zero-shot ones and are not IGLUE numbers.
Translate-test (``--gmt``): the machine-translated test files (``gmt_test_file``; made by ``wit_preproc`` from
``gmt_annotations`` with the test pixels), every language but English.
Run: ``python3 run.py --task wit --dist 1 --checkpoint cclm_4m.th --output_dir out/wit``.
"""
from __future__ import annotations

import logging
from pathlib import Path

from dataset.fewshot import parse_fewshot
from dataset.retrieval import RetrievalEvalDataset, RetrievalTrainDataset, limit_images, read_wit_eval, read_wit_train
from dataset.transforms import build_transform
from dataset.wit import prepare_wit
from tasks.files import language_files
from tasks.retrieval import RetrievalTask
from tasks.retrieval_data import RetrievalData, Selection, image_roots, load_standard_data, subset_eval_data
from tasks.runner import run_script, run_task
from utils.config import ConfigError

logger = logging.getLogger("wit")



def load_fewshot_wit(config: dict, root: Path) -> RetrievalData:
    """Our WIT few-shot split: the first N images of ``test_<lang>`` train, the rest of that file is evaluated."""
    lang, shots = parse_fewshot(config["fewshot"], shots_required=True)
    if "x" in shots or int(shots) < 1:
        raise ConfigError(f"--fewshot {config['fewshot']!r}: for WIT, N is a number of images (e.g. {lang},10)")
    path = language_files(config.get("test_file"), [lang], root, "test_file")[lang]
    roots = image_roots(config.get("image_root"), root)
    max_words, res = int(config["max_words"]), int(config["image_res"])
    pairs = limit_images(read_wit_train(path, roots.wit, max_words), int(shots))
    first_image: dict = {}
    for pair in pairs:
        first_image.setdefault(pair.image_key, pair.image)
    first_refs = list(first_image.values())
    full = read_wit_eval(path, roots.wit, max_words)
    n = len(first_refs)
    if n >= len(full.images):
        raise ConfigError(f"--fewshot {config['fewshot']!r}: {path} has only {len(full.images)} images; "
                          "N must leave some to evaluate")
    if full.images[:n] != first_refs:
        raise AssertionError(f"{path}: the few-shot images are not the first {n} images of the evaluation set")
    train = None if config.get("evaluate") else RetrievalTrainDataset(pairs, build_transform("train", res))
    test = {lang: RetrievalEvalDataset(subset_eval_data(full, range(n, len(full.images))),
                                       build_transform("test", res), lang)}
    logger.info("WIT few-shot %s: training on %d captions of %d images, testing on the other %d images of %s",
                lang, len(pairs), n, len(full.images) - n, path)
    selection = Selection("last", note="our WIT few-shot split has no validation set")
    return RetrievalData(train, {}, test, selection, f"few-shot {config['fewshot']} (split of test_{lang})",
                         {"train_files": [str(path)], "shots": shots, "fewshot_images": n,
                          "fewshot_test_images": len(full.images) - n})


def load_data(config: dict, root: Path) -> RetrievalData:
    """English WIT training / validation and every test language, or our few-shot split."""
    if config.get("fewshot"):
        return load_fewshot_wit(config, root)
    return load_standard_data("wit", config, root)


TASK = RetrievalTask("WIT retrieval", load_data, prepare_data=prepare_wit)


def main(argv=None) -> dict:
    """Run with command-line flags ``argv``; returns the results.json payload (rank 0)."""
    return run_task(TASK, "WIT.py", argv)


if __name__ == "__main__":
    run_script(main)
