"""What the VQA task (GQA.py, model ``cclm_vqa``) adds to the understanding kind: question/answer collates and the
score of a loader, the exact-match accuracy of the answer the model ranks first among a fixed answer list."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from dataset.gqa import collate_gqa_eval, collate_gqa_train
from tasks.understanding import gather_by_key, tokenize
from utils.engine import move_to_device
from utils.metrics import vqa_exact_match


class VQATrainCollate:
    """Training items -> the VQA model's keyword batch (questions truncated at ``max_tokens``; answers are not)."""

    def __init__(self, tokenizer, max_tokens: int):
        self.tokenizer, self.max_tokens = tokenizer, max_tokens

    def __call__(self, batch):
        images, questions, answers, weights, counts = collate_gqa_train(batch)
        question_ids, question_atts = tokenize(self.tokenizer, questions, self.max_tokens)
        answer_ids, answer_atts = tokenize(self.tokenizer, answers)
        return {"image": images, "question_ids": question_ids, "question_atts": question_atts,
                "answer_ids": answer_ids, "answer_atts": answer_atts, "weights": weights, "answer_counts": counts}


class VQAEvalCollate:
    """Evaluation items -> images, questions (padded to the longest, not truncated) and their question ids."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, batch):
        images, questions, question_ids = collate_gqa_eval(batch)
        ids, atts = tokenize(self.tokenizer, questions)
        return {"image": images, "question_ids": ids, "question_atts": atts, "question_id": question_ids}


class AnswerRanking:
    """Scores a loader: exact-match accuracy (%) of the top-ranked answer of the answer list."""

    def __init__(self, answers: Sequence[str], tokenizer, k: int):
        self.answers, self.k = list(answers), int(k)
        self.answer_ids, self.answer_atts = tokenize(tokenizer, self.answers)
        self.last_predictions: dict | None = None  # of the last loader scored (written as prediction files)

    @torch.no_grad()
    def predictions(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, str]:
        """Question id -> predicted answer, over every process's shard."""
        answer_ids, answer_atts = self.answer_ids.to(device), self.answer_atts.to(device)
        pairs = []
        for batch in loader:
            batch = move_to_device(batch, device)
            question_ids = batch.pop("question_id")
            ranked, _ = model.predict_answers(**batch, answer_ids=answer_ids, answer_atts=answer_atts, k=self.k)
            pairs += zip(question_ids, (self.answers[i] for i in ranked[:, 0].tolist()))
        return gather_by_key(pairs)

    def __call__(self, model: nn.Module, loader: DataLoader, device: torch.device) -> float:
        self.last_predictions = self.predictions(model, loader, device)
        return vqa_exact_match(self.last_predictions, loader.dataset.references)
