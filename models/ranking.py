"""The CCLM two-stage ranking of images and texts, used by the retrieval tasks (Retrieval.py, xFlickrCO.py, WIT.py),
the demo and the public API.

Stage 1 ranks every image-text pair by the cosine similarity of the contrastive features (in float32, whatever the
precision of the encoders). Stage 2 re-scores each query's top ``k_test`` candidates with the matching head (the
raw class-1 ITM logit, as the reference does) and ranks by that; equal scores keep the lower candidate index first.
The reference ran one fusion forward per query (``k_test`` pairs) and direction, with the image repeated for every
pair and every padded text position computed, and filled dense N_img x N_txt matrices with -100 (1 GB for 5k x 25k).
Here the candidate pairs of both directions are pooled and each distinct (image, text) pair is scored once: the
images' cross-attention keys/values are projected once for all their pairs (``fusion_memory``), the pairs run in
batches of texts of one length (no fusion layer computes a padding position), and the last fusion layer computes
only the CLS. The pairs are split across processes; only the top-k lists are kept.

Under 16-bit autocast (bf16, fp16) the fusion runs in 16 bits and the stage-2 order is still the float32 one: a
sample of the pairs is also scored in float32 to measure the 16-bit error, and every pair whose 16-bit score is too
close to a neighbour's in some query's list to be ordered by it is re-scored in float32 (:func:`rerank_topk`).

The model is reached through a small interface (any object with these methods, usually ``CCLMView``):
    ``image_embeds(image) -> (B, 1+L, D)``            vision tokens
    ``image_feat(image_embeds) -> (B, E)``            L2-normalised contrastive feature
    ``text_embeds(text_ids, text_atts) -> (B, T, D)`` text-mode hidden states
    ``text_feat(text_embeds) -> (B, E)``
    ``itm_logits(image_embeds, image_atts, text_embeds, text_atts, image_index=None) -> (N,)`` class-1 matching
        logits of N pairs: text row r with image row ``image_index[r]`` (row r when ``image_index`` is None)
    optionally ``fusion_memory(image_embeds, image_atts) -> memory``, which ``itm_logits`` then takes in place of
        ``image_embeds`` (with ``image_atts`` None): the images' fusion keys/values, computed once for all batches
"""
from __future__ import annotations

import contextlib
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

    def fusion_memory(self, image_embeds: torch.Tensor, image_atts: torch.Tensor | None = None):
        return self.model.fusion_memory(image_embeds, image_atts)

    def itm_logits(self, image_embeds, image_atts, text_embeds, text_atts, image_index=None) -> torch.Tensor:
        """Raw class-1 ITM logit of each (image row, text row) pair, all pairs in one fusion forward; the head runs
        in its weights' precision (under autocast a 16-bit logit would round distinct scores to ties)."""
        cls = self.model.get_cross_cls(image_embeds, image_atts, text_embeds, text_atts, memory_index=image_index)
        head = self.model.itm_head
        with torch.autocast(cls.device.type, enabled=False):
            return head(cls.to(next(head.parameters()).dtype))[:, 1]


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
    tok = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_tokens, return_tensors="pt")
    return encode_token_ids(model, tok["input_ids"], tok["attention_mask"], batch_size, device)


@torch.no_grad()
def encode_token_ids(model, ids: torch.Tensor, atts: torch.Tensor, batch_size: int,
                     device: torch.device) -> EncodedTexts:
    """Text-mode states and features of tokenised texts (N x T ids, 0/1 mask), in input order.

    The texts run in batches sorted by used length, so each batch stops at its longest text (the states of the
    padding positions, which nothing reads, are zero beyond it)."""
    order = used_lengths(atts).argsort(stable=True)
    embeds, feats = [], []
    for rows in order.split(batch_size):
        e = model.text_embeds(ids[rows].to(device), atts[rows].to(device))
        embeds.append(e)
        feats.append(model.text_feat(e))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    inverse = inverse.to(device)
    return EncodedTexts(torch.cat(embeds)[inverse], atts.to(device), torch.cat(feats)[inverse])


def shard_rows(n: int, rank: int, world: int) -> range:
    """The contiguous block of query rows this rank re-ranks."""
    per = -(-n // world)
    return range(min(n, rank * per), min(n, (rank + 1) * per))


MEMORY_IMAGES = 64  # images whose fusion keys/values are held at once (full size: ~7 MB each in float32)
CALIBRATION_PAIRS = 64  # pairs scored in both precisions to measure the 16-bit error (or 2% of the pairs if more)
ERROR_SAFETY = 3.0  # the 16-bit error bound used: this times the largest error seen on the calibration pairs


def used_lengths(atts: torch.Tensor) -> torch.Tensor:
    """1 + the last non-padding position of each row of a 0/1 mask (at least 1)."""
    positions = torch.arange(1, atts.shape[1] + 1, device=atts.device)
    return (atts.ne(0) * positions).amax(dim=1).clamp(min=1)


@torch.no_grad()
def score_pairs(model, img: EncodedImages, txt: EncodedTexts, image_idx: torch.Tensor, text_idx: torch.Tensor,
                batch: int, float32: bool = False) -> torch.Tensor:
    """ITM logits (float32) of the pairs (image_idx[j], text_idx[j]), in that order.

    The images are taken ``MEMORY_IMAGES`` at a time; a model with ``fusion_memory`` projects their cross-attention
    keys/values once for all their pairs. Those pairs run in batches of at most ``batch`` whose texts have one used
    length, trimmed to it, so no fusion layer computes a padding position. ``float32``: with autocast off and the
    embeddings in float32 (the exact scores of the 16-bit re-rank)."""
    out = torch.empty(len(image_idx), dtype=torch.float32, device=txt.embeds.device)
    if not len(image_idx):
        return out
    lengths = used_lengths(txt.atts)
    fusion_memory = getattr(model, "fusion_memory", None)
    with torch.autocast(txt.embeds.device.type, enabled=False) if float32 else contextlib.nullcontext():
        for images in image_idx.unique().split(MEMORY_IMAGES):
            rows = torch.isin(image_idx, images).nonzero().squeeze(1)
            local = torch.searchsorted(images, image_idx[rows])
            length = lengths[text_idx[rows]]
            order = (length * len(images) + local).argsort(stable=True)  # by length, then image
            rows, local, length = rows[order], local[order], length[order]
            embeds = img.embeds[images].float() if float32 else img.embeds[images]
            atts = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
            memory = fusion_memory(embeds, atts) if fusion_memory is not None else None
            for start, stop, used in _equal_length_batches(length, batch):
                texts = text_idx[rows[start:stop]]
                text_embeds = txt.embeds[:, :used][texts]
                text_embeds = text_embeds.float() if float32 else text_embeds
                if memory is not None:
                    scores = model.itm_logits(memory, None, text_embeds, txt.atts[:, :used][texts],
                                              image_index=local[start:stop])
                else:  # the batch's distinct images, once each
                    mine, index = local[start:stop].unique(return_inverse=True)
                    scores = model.itm_logits(embeds[mine], atts[mine], text_embeds, txt.atts[:, :used][texts],
                                              image_index=index)
                out[rows[start:stop]] = scores.float()
    return out


def _equal_length_batches(lengths: torch.Tensor, batch: int) -> list[tuple[int, int, int]]:
    """(start, stop, length) of batches of at most ``batch`` consecutive rows of one length (``lengths`` sorted by
    length), each run of a length split into near-equal batches."""
    out, start = [], 0
    values, counts = torch.unique_consecutive(lengths, return_counts=True)
    for used, count in zip(values.tolist(), counts.tolist()):
        parts = -(-count // batch)
        bounds = [start + count * i // parts for i in range(parts + 1)]
        out += [(a, b, used) for a, b in zip(bounds[:-1], bounds[1:])]
        start += count
    return out


def similarities(img: EncodedImages, txt: EncodedTexts) -> torch.Tensor:
    """Stage 1: the N_img x N_txt cosine similarities, in float32 whatever the precision of the features."""
    with torch.autocast(img.feats.device.type, enabled=False):
        return img.feats.float() @ txt.feats.float().t()


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
                directions: Sequence[str] = ("i2t", "t2i"), stats: dict | None = None
                ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Two-stage rankings: {direction: (indices, scores)}, both (N_query, k) on the CPU, best first.

    The distinct candidate pairs of all ``directions`` are scored once, split across processes (every process
    returns the whole result). Under 16-bit autocast the order is the float32 one: the pairs whose 16-bit scores are
    too close to a neighbour's to be ordered by them are re-scored in float32 (their scores are then the float32
    ones). ``stats``, if given, receives the pair counts (and the 16-bit error measured)."""
    unknown = [d for d in directions if d not in ("i2t", "t2i")]
    if unknown:
        raise ValueError(f"directions must be 'i2t' and/or 't2i', got {unknown}")
    n_txt = txt.feats.shape[0]
    sims = similarities(img, txt)
    # Rank 0's candidates on every rank: each rank looks its own pairs' scores up in the gathered result, so the
    # lists must agree even if the ranks' similarity kernels round a top-k boundary differently.
    cand = {d: broadcast_tensor(candidates(sims, k_test, d)) for d in directions}
    keys = []  # pair (image i, text t) -> i * n_txt + t
    for d, c in cand.items():
        query = torch.arange(c.shape[0], device=c.device).unsqueeze(1)
        keys.append((query * n_txt + c if d == "i2t" else c * n_txt + query).reshape(-1))
    pairs = torch.cat(keys).unique()  # sorted: grouped by image
    position = {d: torch.searchsorted(pairs, key).view(cand[d].shape) for d, key in zip(cand, keys)}
    scores = _score_shared(model, img, txt, pairs, n_txt, rerank_batch)
    info = {"pairs": len(pairs)}
    low = _autocast_16bit(txt.embeds.device)
    if low is not None:
        scores = _rescore_close_pairs(model, img, txt, pairs, scores, list(position.values()), n_txt, rerank_batch,
                                      low, info)
    if stats is not None:
        stats.update(info)
    out = {}
    for d in cand:
        idx, sc = order_by_score(cand[d], scores[position[d]])
        out[d] = (idx.cpu(), sc.cpu())
    return out


def _score_shared(model, img, txt, pairs: torch.Tensor, n_txt: int, batch: int, float32: bool = False):
    """Scores of ``pairs`` (keys i * n_txt + t), each process scoring its block; every process gets them all."""
    mine = shard_rows(len(pairs), get_rank(), get_world_size())
    local = pairs[mine.start:mine.stop]
    scores = score_pairs(model, img, txt, local // n_txt, local % n_txt, batch, float32).to(pairs.device)
    if is_dist():
        scores = _gather_rows(scores.view(-1, 1), len(pairs), 1).view(-1)
    return scores


def _autocast_16bit(device: torch.device) -> torch.dtype | None:
    """The 16-bit dtype autocast is running in on ``device``, if any."""
    if not torch.is_autocast_enabled(device.type):
        return None
    dtype = torch.get_autocast_dtype(device.type)
    return dtype if dtype in (torch.bfloat16, torch.float16) else None


def _rescore_close_pairs(model, img, txt, pairs, scores, positions: list[torch.Tensor], n_txt: int, batch: int,
                         dtype: torch.dtype, info: dict) -> torch.Tensor:
    """16-bit ``scores`` with the pairs that cannot be ordered by them replaced by their float32 scores.

    The 16-bit error bound e is ``ERROR_SAFETY`` times the largest difference seen on a fixed random sample of the
    pairs (scored in both precisions). Two candidates of a query whose 16-bit scores are more than 2e apart are in
    their float32 order; every candidate closer than that to its neighbour in the 16-bit order is re-scored. The
    sorted mixed scores then give the float32 order."""
    n = len(pairs)
    sample = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:max(CALIBRATION_PAIRS, -(-n // 50))]
    sample = sample.sort().values.to(pairs.device)
    exact = torch.full_like(scores, float("nan"))
    exact[sample] = _score_shared(model, img, txt, pairs[sample], n_txt, batch, float32=True)
    error = float((scores[sample] - exact[sample]).abs().max()) if len(sample) else 0.0
    bound = max(ERROR_SAFETY * error, 1e-6 * float(scores.abs().max()))  # (the floor: no sample error at all)
    close = torch.zeros(n, dtype=torch.bool, device=scores.device)
    for pos in positions:
        ranked, order = scores[pos].sort(dim=1, descending=True)
        near = (ranked[:, :-1] - ranked[:, 1:]) <= 2 * bound
        ranked_pos = pos.gather(1, order)
        close[ranked_pos[:, :-1][near]] = True
        close[ranked_pos[:, 1:][near]] = True
    todo = (close & exact.isnan()).nonzero().squeeze(1)
    exact[todo] = _score_shared(model, img, txt, pairs[todo], n_txt, batch, float32=True)
    info.update(dtype=str(dtype).replace("torch.", ""), calibration_pairs=len(sample), max_error=error,
                error_bound=bound, rescored_pairs=len(todo), float32_pairs=len(sample) + len(todo))
    logger.info("re-rank in %s: %d pairs; largest error on %d calibration pairs %.3g (bound %.3g); %d close pairs "
                "re-scored in float32", info["dtype"], n, len(sample), error, bound, len(todo))
    return torch.where(exact.isnan(), scores, exact)


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
    sims = similarities(img, txt)
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
