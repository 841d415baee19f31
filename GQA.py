#!/usr/bin/env python3
"""xGQA (IGLUE): visual question answering by generating an answer, ranked over a fixed English answer list.

Data: GQA/xGQA question files in either form (the LXMERT list of ``train.json``/``valid.json`` or the raw-GQA dict keyed
by question id of every xGQA file); the candidate answers are ``trainval_ans2label.json`` in file order.
Model: ``cclm_vqa`` (encoder + answer decoder, models/vqa.py). Training: teacher-forced ``<s> answer </s>``, summed
token NLL. Prediction: ``predict_answers`` (the ``k_test`` answers with the likeliest first token, re-ranked by the
whole answer's likelihood); the score is exact-match accuracy against ``answer`` (dict form) or the first ``label``
key (list form); unanswered questions are not scored (the reference's scorer crashed on the dict form, docs/reference-bugs.md#gqa-scorer).
Predictions: every evaluation writes ``output_dir/predictions/epoch_<E>/test_<lang>.json`` (``--evaluate``:
``predictions/evaluate/``), ``[{"question_id", "answer"}, ...]``; the chosen epoch's are copied to
``predictions/best/``.
Zero-shot: train on English GQA, choose the best epoch on GQA ``valid_file`` (as the reference), report the xGQA test
sets of the few-shot split at that epoch (IGLUE protocol; ``test_languages`` null = whatever the data has).
Few-shot (``--fewshot bn``): train on ``few_shot/<lang>/train_48.json``, evaluate and select on ``few_shot/<lang>/
test.json`` (the reference's protocol: the test set is also the selection set, docs/protocols.md#few-shot-selection).
Run: ``python3 run.py --task gqa --dist 1 --checkpoint cclm.th`` (or this file under torchrun, or ``main(argv)``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from dataset.fewshot import resolve_fewshot
from dataset.gqa import GQAEvalDataset, GQATrainDataset, read_answer_list, read_gqa_questions
from dataset.transforms import build_transform
from tasks.files import as_list, existing_file, language_files
from tasks.runner import run_script, run_task
from tasks.understanding import EvalSet, TaskData, UnderstandingTask
from tasks.vqa import AnswerRanking, VQAEvalCollate, VQATrainCollate

TRAIN_MAX_WORDS, EVAL_MAX_WORDS = 30, 50  # pre_question lengths of the reference


def read_questions(root: Path, paths: Sequence[str | Path], key: str) -> tuple[list, list[Path]]:
    """The questions of every file (either form), in order, and the files."""
    files = [existing_file(root, p, key) for p in paths]
    return [q for path in files for q in read_gqa_questions(path)], files


def build_data(config: dict, root: Path, tokenizer, env) -> TaskData:
    """English GQA train/valid and every xGQA test language, or the few-shot files of ``--fewshot <lang>``."""
    res, image_root = int(config["image_res"]), Path(root) / config["vqa_root"]
    test_transform = build_transform("test", res)
    eval_collate = VQAEvalCollate(tokenizer)

    def eval_set(paths, key):
        questions, files = read_questions(root, paths, key)
        return EvalSet(GQAEvalDataset(questions, image_root, test_transform, EVAL_MAX_WORDS), eval_collate,
                       ", ".join(map(str, files)))

    if config.get("fewshot"):
        few = resolve_fewshot("gqa", config["fewshot"], root)
        tests = {few.language: eval_set([few.eval_file], "test_file")}
        selection, protocol, train_paths = few.language, f"few-shot {few.language},{few.shots}", [few.train_file]
    else:
        by_language = language_files(config["test_file"], config.get("test_languages"), root, "test_file")
        tests = {lang: eval_set([path], "test_file") for lang, path in by_language.items()}
        selection = eval_set(as_list(config["valid_file"], "valid_file"), "valid_file")
        protocol, train_paths = "zero-shot", as_list(config["train_file"], "train_file")
    train = None
    if not config.get("evaluate"):
        questions, _ = read_questions(root, train_paths, "train_file")
        train = GQATrainDataset(questions, image_root, build_transform("train_wohflip", res), TRAIN_MAX_WORDS)
    answers = read_answer_list(existing_file(root, config["answer_list"], "answer_list"))
    scored = {lang: sum(r is not None for r in s.dataset.references.values()) for lang, s in tests.items()}
    return TaskData(tests=tests, selection=selection, train=train,
                    train_collate=VQATrainCollate(tokenizer, int(config["max_tokens"])), protocol=protocol,
                    facts={"answers": len(answers), "k_test": int(config["k_test"]), "scored_questions": scored},
                    score=AnswerRanking(answers, tokenizer, int(config["k_test"])))


TASK = UnderstandingTask("cclm_vqa", "xGQA exact-match accuracy", build_data,
                         train_batch_key="batch_size_train", test_batch_key="batch_size_test")


def main(argv=None) -> dict:
    """Run xGQA with command-line flags ``argv``; returns the results payload."""
    return run_task(TASK, "GQA.py", argv)


if __name__ == "__main__":
    run_script(main)
