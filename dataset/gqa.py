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
from typing import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset

from dataset.checked import (AnnotationError, ImageRoot, RecordReader, file_name_field, integer_id,
                             json_object, read_json_records, read_policy, reject_late, require, string_field, where)
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
    source: str = ""  # the file it was read from

    @property
    def reference(self) -> str | None:
        """The answer it is scored against (None: unanswered, not scored)."""
        return self.answers[0] if self.answers else None


def _from_list_item(item: dict, at: str) -> tuple[str, str, str, tuple]:
    require(item, ("img_id", "question_id", "sent"), at)
    label = item.get("label") or {}
    if not isinstance(label, dict):
        raise AnnotationError(f"{at}: 'label' must map answer -> score, got {type(label).__name__}")
    return (integer_id(item["question_id"], at, "question_id"), file_name_field(item["img_id"], at, "img_id"),
            string_field(item, "sent", at), tuple(label))


def _from_dict_item(question_id: str, item: object, at: str) -> tuple[str, str, str, tuple]:
    item = json_object(item, at)
    require(item, ("question", "imageId"), at)
    answer = item.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise AnnotationError(f"{at}: 'answer' must be a string, got {type(answer).__name__}")
    return (integer_id(question_id, at, "question id"), file_name_field(item["imageId"], at, "imageId"),
            string_field(item, "question", at), (answer,) if answer else ())


def read_gqa_questions(path: PathLike) -> list[GQAQuestion]:
    """All questions of a GQA/xGQA file, in file order, whichever of the two forms it uses; a question id must be an
    integer (or a string of digits) and appear once."""
    questions: list[GQAQuestion] = []
    first_line: dict[str, str] = {}
    with RecordReader(path) as reader:
        form, items = reader.json()
        for at, key, item in items:
            with reader.record(at):
                fields = _from_list_item(json_object(item, at), at) if form == "list" else \
                    _from_dict_item(key, item, at)
                if fields[0] in first_line:
                    raise AnnotationError(f"{at}: question id {fields[0]} repeats the one at {first_line[fields[0]]}")
                first_line[fields[0]] = at
                questions.append(GQAQuestion(*fields, at=at, source=reader.tally.path))
    return questions


def read_answer_list(path: PathLike) -> list[str]:
    """The candidate answers: keys of ``trainval_ans2label.json`` in file order, or the ``label2ans`` list (a bad
    entry is an error naming its line, whatever the policy: the answer list is not a set of records to skip)."""
    records = read_json_records(path)
    answers = []
    for item in records.items:
        at = where(path, item.line)
        if item.error or item.duplicate_of:
            raise AnnotationError(f"{where(path, item.error[0]) if item.error else at}: "
                                  f"{item.error[1] if item.error else f'answer {item.key!r} appears twice'}")
        answer, label = (item.key, item.value) if records.form == "object" else (item.value, item.key)
        if records.form == "object" and (isinstance(label, bool) or not isinstance(label, int)):
            raise AnnotationError(f"{at}: answer {answer!r} maps to {label!r}, not an integer label")
        if not isinstance(answer, str) or not answer:
            raise AnnotationError(f"{at}: an answer must be a non-empty string, got {answer!r}")
        answers.append(answer)
    if not answers:
        raise AnnotationError(f"{path}: the answer list is empty")
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


def usable_questions(questions: list[GQAQuestion], image_root: PathLike, max_words: int,
                     need_answers: bool) -> tuple[list[GQAQuestion], list[str], list[str]]:
    """The questions a dataset can use, with their cleaned texts and image files (``<image_root>/<image id>.jpg``,
    confined to the root). A question without text (or, for training, without an answer), or whose image leaves the
    root, raises; with ``skip_bad_samples`` it is counted against its file and left out."""
    root, skipping = ImageRoot(image_root), read_policy().skip_bad_samples
    kept, texts, images = [], [], []
    for q in questions:
        try:
            if need_answers and not q.answers:
                raise AnnotationError(f"{q.at}: a training question needs an answer")
            text = _clean_question(q, max_words)
            image = root.resolve(f"{q.image_id}.jpg", q.at, skipping)
        except AnnotationError as error:
            reject_late(error, q.source or q.at)
            continue
        kept.append(q)
        texts.append(text)
        images.append(image)
    return kept, texts, images


class GQATrainDataset(Dataset):
    """Training questions: items ``(image tensor, question str, answers list[str], weights list[float])``."""

    def __init__(self, questions: list[GQAQuestion], image_root: PathLike, transform: Callable,
                 max_words: int = 30, flip_prob: float = 0.5):
        self.questions, self.texts, self.images = usable_questions(questions, image_root, max_words, True)
        if not self.questions:
            raise ValueError("GQATrainDataset: no questions")
        self.transform, self.flip_prob = transform, flip_prob

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int):
        q = self.questions[index]
        image = load_image(self.images[index], where=q.at)
        if self.flip_prob > 0 and may_flip(q.question, q.answers) and torch.rand(()).item() < self.flip_prob:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        weights = [1.0 / len(q.answers)] * len(q.answers)
        return self.transform(image), self.texts[index], list(q.answers), weights


class GQAEvalDataset(Dataset):
    """Evaluation questions: items ``(image tensor, question str, question_id str)``."""

    def __init__(self, questions: list[GQAQuestion], image_root: PathLike, transform: Callable, max_words: int = 50):
        self.questions, self.texts, self.images = usable_questions(questions, image_root, max_words, False)
        if not self.questions:
            raise ValueError("GQAEvalDataset: no questions")
        self.transform = transform
        self.references = gqa_references(self.questions)

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int):
        q = self.questions[index]
        return self.transform(load_image(self.images[index], where=q.at)), self.texts[index], q.question_id


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
