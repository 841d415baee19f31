"""CCLM objectives as small pure functions: contrastive (ITC/TTC), matching (ITM/TTM), MLM, box (L1 + GIoU)."""
from __future__ import annotations

import logging
from typing import NamedTuple

import torch
import torch.nn.functional as F

from models.fast_ops import host_checkable
from utils.dist import all_gather_no_grad, all_gather_with_grad

logger = logging.getLogger(__name__)

ITC_GATHER_MODES = ("local", "full")


def similarity_logits(a_feat: torch.Tensor, b_feat: torch.Tensor, temp: torch.Tensor) -> torch.Tensor:
    """a @ b.T / temp in float32 even under autocast: at temperatures near 0.001, half-precision similarities
    would move the logits by whole units."""
    with torch.autocast(device_type=a_feat.device.type, enabled=False):
        return a_feat.float() @ b_feat.float().t() / temp.float()


def contrastive_loss(a_feat: torch.Tensor, b_feat: torch.Tensor, temp: torch.Tensor, idx: torch.Tensor | None = None,
                     gather: str = "local") -> torch.Tensor:
    """Symmetric InfoNCE between normalised features, gathered over all processes.

    ``gather='local'`` reproduces the reference (each process keeps only its own loss terms' gradient for its
    slice); ``'full'`` gives the full-batch gradient. Without ``idx`` the positives are the diagonal; with ``idx``
    (retrieval fine-tuning) every pair with the same id is a positive and the targets are the normalised rows.
    """
    if gather not in ITC_GATHER_MODES:
        raise ValueError(f"itc gather mode must be one of {ITC_GATHER_MODES}, got {gather!r}")
    if a_feat.shape != b_feat.shape:
        raise ValueError(f"contrastive_loss: feature shapes differ: {tuple(a_feat.shape)} vs {tuple(b_feat.shape)}")
    a_all = all_gather_with_grad(a_feat, gather)
    b_all = all_gather_with_grad(b_feat, gather)
    logits = similarity_logits(a_all, b_all, temp)
    if idx is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    idx_all = all_gather_no_grad(idx.view(-1, 1))
    positives = torch.eq(idx_all, idx_all.t()).to(logits.dtype)
    targets = positives / positives.sum(dim=1, keepdim=True)
    loss_a2b = -(F.log_softmax(logits, dim=1) * targets).sum(dim=1).mean()
    loss_b2a = -(F.log_softmax(logits.t(), dim=1) * targets).sum(dim=1).mean()
    return (loss_a2b + loss_b2a) / 2


class HardNegatives(NamedTuple):
    """Per-example negative indices: ``x_for_y[b]`` is the negative X (image) of Y_b (text); ``y_for_x[b]`` the
    negative Y of X_b. The reference draws all of ``x_for_y`` first, then ``y_for_x``."""

    x_for_y: torch.Tensor
    y_for_x: torch.Tensor

    @classmethod
    def from_draws(cls, draws) -> "HardNegatives":
        """Split a flat list of 2*bs draws (reference order: X for each Y, then Y for each X)."""
        flat = torch.as_tensor(draws, dtype=torch.long).reshape(-1)
        if flat.numel() % 2:
            raise ValueError(f"hard-negative draws must have an even length, got {flat.numel()}")
        half = flat.numel() // 2
        return cls(flat[:half], flat[half:])


@torch.no_grad()
def hard_negative_weights(sim: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """Sampling weights: row-softmax of the similarities + 1e-5, with the positives (diagonal or same id) set to 0."""
    weights = F.softmax(sim, dim=1) + 1e-5
    if idx is None:
        weights.fill_diagonal_(0)
    else:
        idx = idx.view(-1, 1)
        weights.masked_fill_(torch.eq(idx, idx.t()), 0)
    return weights


@torch.no_grad()
def sample_hard_negatives(x_feat: torch.Tensor, y_feat: torch.Tensor, temp: torch.Tensor,
                          idx: torch.Tensor | None = None, generator: torch.Generator | None = None) -> HardNegatives:
    """Draw one negative per example from the softmax of the (local) similarities, in the reference's order."""
    sim_x2y = similarity_logits(x_feat, y_feat, temp)
    sim_y2x = similarity_logits(y_feat, x_feat, temp)
    weights_x2y = hard_negative_weights(sim_x2y, idx)
    weights_y2x = hard_negative_weights(sim_y2x, idx)
    # One call per direction: on CPU it draws exactly what the reference's row-by-row calls draw (same generator
    # use, row-major), and on a GPU it is one kernel instead of one per row.
    x_for_y = torch.multinomial(weights_y2x, 1, generator=generator).squeeze(1)
    y_for_x = torch.multinomial(weights_x2y, 1, generator=generator).squeeze(1)
    return HardNegatives(x_for_y, y_for_x)


def check_hard_negatives(negatives: HardNegatives, batch_size: int) -> HardNegatives:
    """Validate injected negatives: two index vectors of the batch size, each index in range."""
    for name, index in (("x_for_y", negatives.x_for_y), ("y_for_x", negatives.y_for_x)):
        if index.shape != (batch_size,):
            raise ValueError(f"hard negatives {name}: expected shape ({batch_size},), got {tuple(index.shape)}")
        if host_checkable(index) and (int(index.min()) < 0 or int(index.max()) >= batch_size):
            raise ValueError(f"hard negatives {name}: indices must lie in [0, {batch_size}), got {index.tolist()}")
    return negatives


def matching_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the ITM head: label 1 for the positives, 0 for the negatives."""
    logits = torch.cat([pos_logits, neg_logits], dim=0)
    labels = torch.cat([torch.ones(pos_logits.shape[0], dtype=torch.long, device=logits.device),
                        torch.zeros(neg_logits.shape[0], dtype=torch.long, device=logits.device)])
    return F.cross_entropy(logits, labels)


def mlm_loss(logits: torch.Tensor, masked_ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the masked slots (labels -100 are padding and ignored)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), masked_ids.reshape(-1), ignore_index=-100)


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x0, y0, x1, y1)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def paired_generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """GIoU of boxes1[i] with boxes2[i] (xyxy): IoU - (enclosing area - union) / enclosing area."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    inter_wh = (torch.min(boxes1[:, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    inter = inter_wh[:, 0] * inter_wh[:, 1]
    union = area1 + area2 - inter
    iou = inter / union
    hull_wh = (torch.max(boxes1[:, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    hull = hull_wh[:, 0] * hull_wh[:, 1]
    return iou - (hull - union) / hull


def _any_degenerate_box(*boxes: torch.Tensor) -> torch.Tensor:
    """0-dim bool: whether any xyxy box has x1 < x0 or y1 < y0 (kept on the device: no host sync)."""
    return torch.stack([(b[:, 2:] < b[:, :2]).any() for b in boxes]).any()


def bbox_losses(pred: torch.Tensor, target: torch.Tensor, is_image: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1, GIoU) box losses averaged over region items; whole-image items (``is_image`` = 1) are excluded.

    L1 is summed over the 4 coordinates of an item. If any box is degenerate the GIoU term of the whole batch is 0
    (as in the reference). A batch with no region item gives zero losses that still carry a graph (never 0/0).
    """
    l1 = F.l1_loss(pred, target, reduction="none")
    boxes_pred, boxes_target = box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target)
    degenerate = _any_degenerate_box(boxes_pred, boxes_target)
    if host_checkable(degenerate) and bool(degenerate):
        logger.warning("bbox_losses: a degenerate box (x1 < x0 or y1 < y0); GIoU loss set to 0 for this batch")
    # Decided on the device (no sync, no graph break): a degenerate batch computes the GIoU of unit boxes, whose
    # loss is 0 and whose gradient to the predictions is 0 (a masked NaN would still poison the gradient).
    unit = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=boxes_pred.dtype, device=boxes_pred.device)
    giou = 1 - paired_generalized_box_iou(torch.where(degenerate, unit, boxes_pred),
                                          torch.where(degenerate, unit, boxes_target))
    if is_image is None:
        weights = torch.ones_like(giou)
    else:
        weights = 1 - is_image.to(giou.dtype)
    num_boxes = weights.sum().clamp(min=1)
    return (l1 * weights[:, None]).sum() / num_boxes, (giou * weights).sum() / num_boxes
