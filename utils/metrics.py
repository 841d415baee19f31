"""Pure evaluation metrics: retrieval recall@K, classification accuracy, VQA exact match.

Everything here is a plain function from arrays/mappings to numbers: no distributed code, no I/O, no model.
All metrics are returned as percentages (0-100), the unit of the IGLUE and CCLM tables.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np


def _as_matrix(scores, name: str) -> np.ndarray:
    """A 2-D float64 numpy copy of ``scores`` (numpy array, torch tensor or nested lists)."""
    if hasattr(scores, "detach"):  # torch tensor, without importing torch here
        scores = scores.detach().cpu().float().numpy()
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D score matrix, got shape {matrix.shape}")
    if np.isnan(matrix).any():
        raise ValueError(f"{name} contains NaN scores")
    return matrix


def _as_index_lists(mapping, n_rows: int, n_cols: int, name: str) -> list[list[int]]:
    """Ground truth per query as lists of candidate indices; accepts a sequence or a {row: ...} mapping of ints/lists."""
    if hasattr(mapping, "tolist"):  # numpy array / torch tensor
        mapping = mapping.tolist()
    if isinstance(mapping, Mapping):
        missing = [i for i in range(n_rows) if i not in mapping]
        if missing:
            raise ValueError(f"{name} has no ground truth for query {missing[0]} ({len(missing)} queries missing)")
        mapping = [mapping[i] for i in range(n_rows)]
    if len(mapping) != n_rows:
        raise ValueError(f"{name} has {len(mapping)} entries but the score matrix has {n_rows} rows")
    lists = []
    for row, targets in enumerate(mapping):
        if hasattr(targets, "tolist"):
            targets = targets.tolist()
        targets = [int(t) for t in (targets if isinstance(targets, Iterable) else [targets])]
        if not targets:
            raise ValueError(f"{name}[{row}] is empty: every query needs at least one ground-truth candidate")
        bad = [t for t in targets if not 0 <= t < n_cols]
        if bad:
            raise ValueError(f"{name}[{row}] refers to candidate {bad[0]}, outside 0..{n_cols - 1}")
        lists.append(targets)
    return lists


def best_gt_ranks(scores: np.ndarray, ground_truth: Sequence[Sequence[int]]) -> np.ndarray:
    """0-based rank of each row's best-scored ground truth among its candidates (descending scores).

    Rank = number of non-ground-truth candidates scored at least as high as the best ground truth, so ties are
    broken against the ground truth (a model gets no credit for a tie; the reference's argsort left ties to chance).
    This is the dense-matrix check; the two-stage evaluator (:func:`models.ranking.order_by_score`) puts the
    lower candidate index first on a tie, so the two agree except on exact ties.
    """
    ranks = np.empty(len(ground_truth), dtype=np.int64)
    for row, targets in enumerate(ground_truth):
        row_scores = scores[row]
        best = row_scores[targets].max()
        at_least_as_good = np.count_nonzero(row_scores >= best)
        gt_at_least_as_good = np.count_nonzero(row_scores[targets] >= best)
        ranks[row] = at_least_as_good - gt_at_least_as_good
    return ranks


def _recall_at(ranks: np.ndarray, k: int) -> float:
    return 100.0 * float(np.count_nonzero(ranks < k)) / len(ranks)


def retrieval_recall(scores_i2t, img2txt, txt2img, ks: Sequence[int] = (1, 5, 10), scores_t2i=None) -> dict:
    """Recall@K in both directions, their means and ``r_mean`` (percentages), from image-text score matrices.

    ``scores_i2t`` is N_img x N_txt; ``scores_t2i`` (N_txt x N_img) defaults to its transpose. Two-stage evaluation
    produces two different matrices (each direction re-ranks its own top-k), so pass both then.
    ``img2txt[i]``: the text indices of image i (several captions per image). ``txt2img[t]``: the image index of text t,
    or a list of indices where a text belongs to several images. A query counts as found at K when any of its
    ground-truth candidates is among the first K. Returns ``txt_r{K}`` (image->text), ``txt_r_mean``, ``img_r{K}``
    (text->image), ``img_r_mean`` and ``r_mean = (txt_r_mean + img_r_mean) / 2``.
    """
    i2t = _as_matrix(scores_i2t, "scores_i2t")
    t2i = i2t.T if scores_t2i is None else _as_matrix(scores_t2i, "scores_t2i")
    n_img, n_txt = i2t.shape
    if t2i.shape != (n_txt, n_img):
        raise ValueError(f"scores_t2i has shape {t2i.shape}, expected {(n_txt, n_img)} (N_txt x N_img)")
    if not ks:
        raise ValueError("ks must name at least one K")
    txt_ranks = best_gt_ranks(i2t, _as_index_lists(img2txt, n_img, n_txt, "img2txt"))
    img_ranks = best_gt_ranks(t2i, _as_index_lists(txt2img, n_txt, n_img, "txt2img"))
    result = {}
    for prefix, ranks in (("txt", txt_ranks), ("img", img_ranks)):
        recalls = [_recall_at(ranks, k) for k in ks]
        result.update({f"{prefix}_r{k}": r for k, r in zip(ks, recalls)})
        result[f"{prefix}_r_mean"] = sum(recalls) / len(recalls)
    result["r_mean"] = (result["txt_r_mean"] + result["img_r_mean"]) / 2
    # Fixed key order: the reference's itm_eval order.
    order = [f"txt_r{k}" for k in ks] + ["txt_r_mean"] + [f"img_r{k}" for k in ks] + ["img_r_mean", "r_mean"]
    return {key: result[key] for key in order}


def accuracy(predictions, labels) -> float:
    """Percentage of correct predictions; ``predictions`` are class ids (N,) or logits (N, C), argmax taken."""
    if hasattr(predictions, "detach"):
        predictions = predictions.detach().cpu().numpy()
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.ndim == 2:
        predictions = predictions.argmax(axis=1)
    if predictions.ndim != 1 or labels.ndim != 1 or len(predictions) != len(labels):
        raise ValueError(f"accuracy: predictions {predictions.shape} and labels {labels.shape} do not match")
    if len(labels) == 0:
        raise ValueError("accuracy: no examples")
    return 100.0 * float(np.count_nonzero(predictions == labels)) / len(labels)


def vqa_exact_match(predictions: Mapping[str, str], references: Mapping[str, str | None]) -> float:
    """Percentage of questions whose predicted answer string equals the reference exactly (the GQA/xGQA score).

    Keys are question ids (compared as strings). Questions whose reference is None (no answer known) are not
    scored; every scored question must have a prediction, otherwise a ValueError names the missing ids.
    """
    preds = {str(qid): answer for qid, answer in predictions.items()}
    scored = {str(qid): answer for qid, answer in references.items() if answer is not None}
    if not scored:
        raise ValueError("vqa_exact_match: no question has a reference answer")
    missing = [qid for qid in scored if qid not in preds]
    if missing:
        raise ValueError(f"vqa_exact_match: no prediction for {len(missing)} question(s), e.g. {missing[:3]}")
    correct = sum(1 for qid, answer in scored.items() if preds[qid] == answer)
    return 100.0 * correct / len(scored)
