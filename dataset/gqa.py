"""GQA / xGQA question answering: both GQA file forms, the answer vocabulary, train and eval datasets.

Two file forms are read (the form is detected from the top-level JSON type):

* list (LXMERT style: GQA ``train.json``, ``valid.json``, ``testdev.json``):
  ``[{"img_id", "label": {answer: score}, "question_id", "sent"}, ...]``; reference answer = first key of ``label``;
* dict (raw GQA: every xGQA file, ``testdev_balanced_questions.json``): ``{question_id: {"question", "imageId",
  "answer", ...}}``; reference answer = ``answer``.

Questions are cleaned with ``pre_question`` (max_words 30 for training, 50 for evaluation) and left as strings for
the task script to tokenise. Training items are ``(image, question, answers, weights)`` with every answer weighted
``1/len(answers)`` (label scores are ignored, as in the reference). Training images are flipped horizontally with
probability 0.5 unless the raw question or an answer contains ``left`` or ``right`` (case-sensitive, as the
reference's "careful" flip); use the ``train_wohflip`` transform with it. Evaluation items are
``(image, question, question_id str)``; score with :func:`gqa_references` and :func:`utils.metrics.vqa_exact_match`.

Expected layout (relative to the data root)::

    iglue/datasets/gqa/annotations/train.json                  (unzip IGLUE's train.json.zip)   list form
    iglue/datasets/gqa/annotations/{valid,testdev}.json        list form
    iglue/datasets/gqa/annotations/trainval_ans2label.json     answer vocabulary (1842 answers, file order)
    iglue/datasets/xGQA/annotations/few_shot/<l>/{train_<N>,dev,test}.json   dict form; l = bn de en id ko pt ru zh
    iglue/datasets/xGQA/annotations/zero_shot/testdev_balanced_questions_<l>.json   dict form
    images/gqa/<imageId>.jpg
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset

from dataset.checked import AnnotationError, read_json, record_key, require, where
from dataset.images import load_image
from dataset.text import pre_question

PathLike = str | os.PathLike


@dataclass(frozen=True)
class GQAQuestion:
    """One question as read from either file form (text not yet cleaned)."""

    question_id: str
    image_id: str
    question: str
    answers: tuple[str, ...]  # training answers; the first is the reference answer; () when unknown
    at: str

    @property
    def reference(self) -> str | None:
        """The answer it is scored against (None: unanswered, not scored)."""
        return self.answers[0] if self.answers else None


def _from_list_item(item: dict, at: str) -> GQAQuestion:
    require(item, ("img_id", "question_id", "sent"), at)
    label = item.get("label") or {}
    if not isinstance(label, dict):
        raise AnnotationError(f"{at}: 'label' must map answer -> score, got {type(label).__name__}")
    return GQAQuestion(str(record_key(item["question_id"], at)), str(record_key(item["img_id"], at)),
                       _text(item["sent"], at), tuple(label), at)


def _from_dict_item(question_id: str, item: dict, at: str) -> GQAQuestion:
    require(item, ("question", "imageId"), at)
    answer = item.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise AnnotationError(f"{at}: 'answer' must be a string, got {type(answer).__name__}")
    return GQAQuestion(question_id, str(record_key(item["imageId"], at)), _text(item["question"], at),
                       (answer,) if answer else (), at)


def _text(value: object, at: str) -> str:
    if not isinstance(value, str):
        raise AnnotationError(f"{at}: question must be a string, got {type(value).__name__}")
    return value


def read_gqa_questions(path: PathLike) -> list[GQAQuestion]:
    """All questions of a GQA/xGQA file, in file order, whichever of the two forms it uses."""
    data = read_json(path)
    if isinstance(data, list):
        questions = []
        for i, item in enumerate(data):
            at = where(path, f"item {i}")
            if not isinstance(item, dict):
                raise AnnotationError(f"{at}: expected an object, got {type(item).__name__}")
            questions.append(_from_list_item(item, at))
        return questions
    if isinstance(data, dict):
        questions = []
        for qid, item in data.items():
            at = where(path, f"question {qid}")
            if not isinstance(item, dict):
                raise AnnotationError(f"{at}: expected an object, got {type(item).__name__}")
            questions.append(_from_dict_item(qid, item, at))
        return questions
    raise AnnotationError(f"{path}: expected a list (LXMERT form) or a dict keyed by question id (GQA form), "
                          f"got {type(data).__name__}")


def read_answer_list(path: PathLike) -> list[str]:
    """The candidate answers: keys of ``trainval_ans2label.json`` in file order, or the ``label2ans`` list."""
    data = read_json(path)
    if isinstance(data, dict):
        bad = [k for k, v in data.items() if isinstance(v, bool) or not isinstance(v, int)]
        if bad:
            raise AnnotationError(f"{path}: answer {bad[0]!r} maps to {data[bad[0]]!r}, not an integer label")
        answers = list(data)
    elif isinstance(data, list):
        answers = data
    else:
        raise AnnotationError(f"{path}: expected ans2label (dict) or label2ans (list), got {type(data).__name__}")
    if not answers or not all(isinstance(a, str) and a for a in answers):
        raise AnnotationError(f"{path}: the answer list must be non-empty strings")
    if len(set(answers)) != len(answers):
        raise AnnotationError(f"{path}: the answer list has duplicates")
    return answers


def gqa_references(questions: list[GQAQuestion]) -> dict[str, str | None]:
    """``{question_id: reference answer or None}`` for :func:`utils.metrics.vqa_exact_match`."""
    return {q.question_id: q.reference for q in questions}


def may_flip(question: str, answers: tuple[str, ...]) -> bool:
    """False when mirroring the image would change the answer: the raw question or an answer says left/right."""
    return not any("left" in text or "right" in text for text in (question, *answers))


def _clean_question(question: GQAQuestion, max_words: int) -> str:
    try:
        cleaned = pre_question(question.question, max_words)
    except ValueError as e:
        raise AnnotationError(f"{question.at}: question {question.question!r} is empty after cleaning ({e})") from e
    if not cleaned.strip():
        raise AnnotationError(f"{question.at}: question {question.question!r} is empty after cleaning")
    return cleaned


class GQATrainDataset(Dataset):
    """Training questions: items ``(image tensor, question str, answers list[str], weights list[float])``."""

    def __init__(self, questions: list[GQAQuestion], image_root: PathLike, transform: Callable,
                 max_words: int = 30, flip_prob: float = 0.5):
        unanswered = [q for q in questions if not q.answers]
        if unanswered:
            raise AnnotationError(f"{unanswered[0].at}: a training question needs an answer "
                                  f"({len(unanswered)} question(s) have none)")
        if not questions:
            raise ValueError("GQATrainDataset: no questions")
        self.questions, self.image_root, self.transform = questions, Path(image_root), transform
        self.texts = [_clean_question(q, max_words) for q in questions]
        self.flip_prob = flip_prob

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int):
        q = self.questions[index]
        image = load_image(self.image_root / f"{q.image_id}.jpg", where=q.at)
        if self.flip_prob > 0 and may_flip(q.question, q.answers) and torch.rand(()).item() < self.flip_prob:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        weights = [1.0 / len(q.answers)] * len(q.answers)
        return self.transform(image), self.texts[index], list(q.answers), weights


class GQAEvalDataset(Dataset):
    """Evaluation questions: items ``(image tensor, question str, question_id str)``."""

    def __init__(self, questions: list[GQAQuestion], image_root: PathLike, transform: Callable, max_words: int = 50):
        if not questions:
            raise ValueError("GQAEvalDataset: no questions")
        self.questions, self.image_root, self.transform = questions, Path(image_root), transform
        self.texts = [_clean_question(q, max_words) for q in questions]
        self.references = gqa_references(questions)

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int):
        q = self.questions[index]
        image = load_image(self.image_root / f"{q.image_id}.jpg", where=q.at)
        return self.transform(image), self.texts[index], q.question_id


def collate_gqa_train(batch):
    """``(images, questions, answers flat list, weights FloatTensor, counts list[int])``: question i owns
    ``counts[i]`` consecutive answers."""
    images, questions, answers, weights = zip(*batch)
    flat_answers = [a for group in answers for a in group]
    flat_weights = torch.tensor([w for group in weights for w in group], dtype=torch.float)
    return torch.stack(images), list(questions), flat_answers, flat_weights, [len(group) for group in answers]


def collate_gqa_eval(batch):
    """``(images, questions list[str], question_ids list[str])``."""
    images, questions, question_ids = zip(*batch)
    return torch.stack(images), list(questions), list(question_ids)
