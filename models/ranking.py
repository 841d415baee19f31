"""Two-stage image-text retrieval evaluation, shared by Retrieval.py, xFlickrCO.py and WIT.py.

Stage 1 ranks every image-text pair by the cosine similarity of the contrastive features. Stage 2 re-scores each
query's top ``k_test`` candidates with the matching head (the raw class-1 ITM logit, as the reference does) and
ranks by that; equal scores keep the lower candidate index first. The reference ran one fusion forward per query
(``k_test`` pairs) and direction, and filled dense N_img x N_txt matrices with -100 (1 GB for 5k x 25k). Here the
candidate pairs of both directions are pooled and each distinct (image, text) pair is scored once; the pairs are
sorted by image and packed ``rerank_batch`` to a fusion forward, in which each image's cross-attention keys and
values are projected once and the last fusion layer computes only the CLS. The pairs are split across processes;
only the top-k lists are kept.

The model is reached through a small interface (any object with these methods, usually ``CCLMView``):
    ``image_embeds(image) -> (B, 1+L, D)``            vision tokens
    ``image_feat(image_embeds) -> (B, E)``            L2-normalised contrastive feature
    ``text_embeds(text_ids, text_atts) -> (B, T, D)`` text-mode hidden states
    ``text_feat(text_embeds) -> (B, E)``
    ``itm_logits(image_embeds, image_atts, text_embeds, text_atts, image_index=None) -> (N,)`` class-1 matching
        logits of N pairs: text row r with image row ``image_index[r]`` (row r when ``image_index`` is None)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from utils.dist import all_gather_no_grad, broadcast_tensor, get_rank, get_world_size, is_dist

logger = logging.getLogger(__name__)


class CCLMView:
    """The interface above over any CCLM model with an ``itm_head`` (retrieval, pre-training, the demo's)."""

    def __init__(self, model):
        self.model = model

    def image_embeds(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.get_vision_embeds(image)[0]

    def image_feat(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_feat(image_embeds)

    def text_embeds(self, text_ids: torch.Tensor, text_atts: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_embeds(text_ids, text_atts)

    def text_feat(self, text_embeds: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_feat(text_embeds)

    def itm_logits(self, image_embeds, image_atts, text_embeds, text_atts, image_index=None) -> torch.Tensor:
        """Raw class-1 ITM logit of each (image row, text row) pair, all pairs in one fusion forward."""
        cls = self.model.get_cross_cls(image_embeds, image_atts, text_embeds, text_atts, memory_index=image_index)
        return self.model.itm_head(cls)[:, 1]


@dataclass
class EncodedImages:
    embeds: torch.Tensor  # (N_img, 1+L, D)
    feats: torch.Tensor   # (N_img, E)


@dataclass
class EncodedTexts:
    embeds: torch.Tensor  # (N_txt, T, D)
    atts: torch.Tensor    # (N_txt, T)
    feats: torch.Tensor   # (N_txt, E)


@torch.no_grad()
def encode_images(model, images: Iterable[torch.Tensor], device: torch.device) -> EncodedImages:
    """Vision tokens and features for batches of image tensors, in order."""
    embeds, feats = [], []
    for image in images:
        e = model.image_embeds(image.to(device, non_blocking=True))
        embeds.append(e)
        feats.append(model.image_feat(e))
    return EncodedImages(torch.cat(embeds), torch.cat(feats))


@torch.no_grad()
def encode_texts(model, texts: Sequence[str], tokenizer, max_tokens: int, batch_size: int,
                 device: torch.device) -> EncodedTexts:
    """Text-mode states and features; every text padded (and truncated) to ``max_tokens`` as the reference does."""
    embeds, atts, feats = [], [], []
    for start in range(0, len(texts), batch_size):
        tok = tokenizer(list(texts[start:start + batch_size]), padding="max_length", truncation=True,
                        max_length=max_tokens, return_tensors="pt")
        ids, att = tok["input_ids"].to(device), tok["attention_mask"].to(device)
        e = model.text_embeds(ids, att)
        embeds.append(e)
        atts.append(att)
        feats.append(model.text_feat(e))
    return EncodedTexts(torch.cat(embeds), torch.cat(atts), torch.cat(feats))


def shard_rows(n: int, rank: int, world: int) -> range:
    """The contiguous block of query rows this rank re-ranks."""
    per = -(-n // world)
    return range(min(n, rank * per), min(n, (rank + 1) * per))


@torch.no_grad()
def score_pairs(model, img: EncodedImages, txt: EncodedTexts, image_idx: torch.Tensor, text_idx: torch.Tensor,
                batch: int) -> torch.Tensor:
    """ITM logits of the pairs (image_idx[j], text_idx[j]), ``batch`` pairs per fusion forward.

    Each forward gets the distinct images of its pairs once (the model shares their keys/values), so pairs sorted
    by image make the fewest image rows."""
    out = []
    for s in range(0, len(image_idx), batch):
        images, image_index = image_idx[s:s + batch].unique(return_inverse=True)
        texts = text_idx[s:s + batch]
        memory = img.embeds[images]
        memory_atts = torch.ones(memory.shape[:2], dtype=torch.long, device=memory.device)
        out.append(model.itm_logits(memory, memory_atts, txt.embeds[texts], txt.atts[texts],
                                    image_index=image_index).float())
    return torch.cat(out) if out else torch.empty(0)


def candidates(sims: torch.Tensor, k: int, direction: str) -> torch.Tensor:
    """Stage 1: each query's ``k`` most similar candidates in the N_img x N_txt ``sims`` matrix, (N_query, k)."""
    sims = sims.t() if direction == "t2i" else sims
    return sims.topk(min(k, sims.shape[1]), dim=1).indices


def order_by_score(cand: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row's candidates by score, best first; equal scores put the lower candidate index first."""
    by_index = cand.argsort(dim=1)
    cand, scores = cand.gather(1, by_index), scores.gather(1, by_index)
    order = scores.argsort(dim=1, descending=True, stable=True)
    return cand.gather(1, order), scores.gather(1, order)


@torch.no_grad()
def rerank_topk(model, img: EncodedImages, txt: EncodedTexts, k_test: int, rerank_batch: int = 128,
                directions: Sequence[str] = ("i2t", "t2i")) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Two-stage rankings: {direction: (indices, scores)}, both (N_query, k) on the CPU, best first.

    The distinct candidate pairs of all ``directions`` are scored once, split across processes (every process
    returns the whole result)."""
    unknown = [d for d in directions if d not in ("i2t", "t2i")]
    if unknown:
        raise ValueError(f"directions must be 'i2t' and/or 't2i', got {unknown}")
    n_txt = txt.feats.shape[0]
    sims = img.feats @ txt.feats.t()
    # Rank 0's candidates on every rank: each rank looks its own pairs' scores up in the gathered result, so the
    # lists must agree even if the ranks' similarity kernels round a top-k boundary differently.
    cand = {d: broadcast_tensor(candidates(sims, k_test, d)) for d in directions}
    keys = []  # pair (image i, text t) -> i * n_txt + t
    for d, c in cand.items():
        query = torch.arange(c.shape[0], device=c.device).unsqueeze(1)
        keys.append((query * n_txt + c if d == "i2t" else c * n_txt + query).reshape(-1))
    pairs = torch.cat(keys).unique()  # sorted: grouped by image
    mine = shard_rows(len(pairs), get_rank(), get_world_size())
    local = pairs[mine.start:mine.stop]
    scores = score_pairs(model, img, txt, local // n_txt, local % n_txt, rerank_batch).to(pairs.device)
    if is_dist():
        scores = _gather_rows(scores.view(-1, 1), len(pairs), 1).view(-1)
    out = {}
    for d, key in zip(cand, keys):
        pair_scores = scores[torch.searchsorted(pairs, key)].view(cand[d].shape)
        idx, sc = order_by_score(cand[d], pair_scores)
        out[d] = (idx.cpu(), sc.cpu())
    return out


def _gather_rows(local: torch.Tensor, n: int, k: int) -> torch.Tensor:
    # Every rank owns at most ceil(n/world) rows (shard_rows): pad to that, gather, trim.
    per = -(-n // get_world_size())
    padded = torch.zeros((per, k), dtype=local.dtype, device=local.device)
    padded[:len(local)] = local
    return all_gather_no_grad(padded)[:n]


def recall_from_topk(topk: torch.Tensor, ground_truth: Sequence[Sequence[int]], ks: Sequence[int]) -> list[float]:
    """Recall@K (percent) from sorted top-k candidate lists: a query counts when a ground truth is in its first K.

    A ground truth outside the re-ranked top-k counts as a miss at every K <= k (the reference scored it -100).
    """
    if len(topk) != len(ground_truth):
        raise ValueError(f"{len(topk)} ranked queries but {len(ground_truth)} ground-truth entries")
    hits = {k: 0 for k in ks}
    for row, gts in zip(topk.tolist(), ground_truth):
        gts = set(gts if isinstance(gts, (list, tuple, set)) else [gts])
        first = next((pos for pos, c in enumerate(row) if c in gts), None)
        for k in ks:
            hits[k] += first is not None and first < k
    return [100.0 * hits[k] / max(1, len(topk)) for k in ks]


def retrieval_metrics(i2t_topk: torch.Tensor, t2i_topk: torch.Tensor, img2txt: Sequence, txt2img: Sequence,
                      ks: Sequence[int] = (1, 5, 10)) -> dict:
    """``txt_r{K}`` (image->text), ``img_r{K}`` (text->image), their means and ``r_mean``, as the reference names them."""
    txt = recall_from_topk(i2t_topk, img2txt, ks)
    img = recall_from_topk(t2i_topk, txt2img, ks)
    out = {f"txt_r{k}": v for k, v in zip(ks, txt)}
    out["txt_r_mean"] = sum(txt) / len(txt)
    out.update({f"img_r{k}": v for k, v in zip(ks, img)})
    out["img_r_mean"] = sum(img) / len(img)
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out


@torch.no_grad()
def contrastive_topk(img: EncodedImages, txt: EncodedTexts, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-1 rankings alone (cosine similarity), (N_img, k) and (N_txt, k) index lists."""
    sims = img.feats @ txt.feats.t()
    return candidates(sims, k, "i2t").cpu(), candidates(sims, k, "t2i").cpu()


@torch.no_grad()
def evaluate_retrieval(model, img: EncodedImages, txt: EncodedTexts, img2txt: Sequence, txt2img: Sequence, *,
                       k_test: int, rerank_batch: int = 128, ks: Sequence[int] = (1, 5, 10),
                       with_itc: bool = True) -> dict:
    """Two-stage metrics (ITM re-rank of the ITC top-k); with ``with_itc`` also the ITC-only ones, prefixed ``itc_``."""
    ranked = rerank_topk(model, img, txt, k_test, rerank_batch)
    i2t, t2i = ranked["i2t"][0], ranked["t2i"][0]
    metrics = retrieval_metrics(i2t, t2i, img2txt, txt2img, ks)
    if with_itc:
        ci2t, ct2i = contrastive_topk(img, txt, max(ks))
        metrics.update({f"itc_{k}": v for k, v in retrieval_metrics(ci2t, ct2i, img2txt, txt2img, ks).items()})
    return metrics
