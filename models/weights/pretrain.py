"""The pre-training model's checkpoint layout: the reference's (``CrossViewLM``) <-> ours (``CCLMPretrain``).

Our text encoder uses the reference's own names (``text_encoder.bert.*``, ``text_encoder.cls.*``), so the text part
of a reference checkpoint loads as is; the Swin part goes through the Swin key conversion.
"""
from __future__ import annotations

import torch
from torch import nn

from models.weights.keys import add_prefix, split_prefix, strip_prefixes
from models.weights.swin import (VISION_PREFIX, is_reference_layout, swin_ours_to_reference,
                                 swin_reference_to_ours)

TEXT_POSITION_IDS = "text_encoder.bert.embeddings.position_ids"
TEXT_POSITION_TABLE = "text_encoder.bert.embeddings.position_embeddings.weight"


def reference_to_ours(state_dict: dict, window_size: int | None = None) -> dict[str, torch.Tensor]:
    """Reference pre-training layout (``CrossViewLM.state_dict()``) -> ``CCLMPretrain`` keys.

    Swin keys go through the Swin conversion (bias tables resized to ``window_size`` when given); the text
    position-id buffer is dropped (we recompute it); every other key is already ours.
    """
    vision, out = split_prefix(strip_prefixes(state_dict), VISION_PREFIX)
    out.pop(TEXT_POSITION_IDS, None)
    if vision:
        out.update(add_prefix(swin_reference_to_ours(vision, window_size=window_size or None), VISION_PREFIX))
    return out


def pretrain_to_ours(state_dict: dict, window_size: int | None = None) -> dict[str, torch.Tensor]:
    """A pre-training state dict in either layout -> ``CCLMPretrain`` keys: the reference's through
    :func:`reference_to_ours`; ours (timm Swin keys, e.g. our ``model_state_epoch_E.th``) as it is."""
    state_dict = strip_prefixes(state_dict)
    vision, _ = split_prefix(state_dict, VISION_PREFIX)
    if vision and not is_reference_layout(vision):
        return {k: v for k, v in state_dict.items() if k != TEXT_POSITION_IDS}
    return reference_to_ours(state_dict, window_size=window_size)


def ours_to_reference(state_dict: dict, vision_encoder: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """``CCLMPretrain`` keys -> the reference pre-training layout, with the text position-id buffer restored
    (and the Swin ``relative_position_index``/``attn_mask`` buffers when ``vision_encoder`` is given)."""
    vision, out = split_prefix(strip_prefixes(state_dict), VISION_PREFIX)
    if vision:
        out.update(add_prefix(swin_ours_to_reference(vision, encoder=vision_encoder), VISION_PREFIX))
    if TEXT_POSITION_TABLE in out and TEXT_POSITION_IDS not in out:
        out[TEXT_POSITION_IDS] = position_ids(out[TEXT_POSITION_TABLE])
    return out


def position_ids(position_table: torch.Tensor) -> torch.Tensor:
    """The reference's position-id buffer (1 x P: 0..P-1) for a P-row position table."""
    return torch.arange(position_table.shape[0], device=position_table.device).unsqueeze(0)
