"""The pre-training model's checkpoint layout: the reference's (``CrossViewLM``) <-> ours (``CCLMPretrain``).

Our text encoder uses the reference's own names (``text_encoder.bert.*``, ``text_encoder.cls.*``), so the text part
of a reference checkpoint loads as is; the Swin part goes through the Swin key conversion.
"""
from __future__ import annotations

import torch
from torch import nn

from models.weights.files import strip_prefixes
from models.weights.swin import swin_ours_to_reference, swin_reference_to_ours

VISION_PREFIX = "vision_encoder."
TEXT_POSITION_IDS = "text_encoder.bert.embeddings.position_ids"


def reference_to_ours(state_dict: dict, window_size: int | None = None) -> dict[str, torch.Tensor]:
    """Reference pre-training layout (``CrossViewLM.state_dict()``) -> ``CCLMPretrain`` keys.

    Swin keys go through the vision module's conversion (bias tables resized to ``window_size`` when given);
    the text position-id buffer is dropped (we recompute it); every other key is already ours.
    """
    state_dict = strip_prefixes(state_dict)
    vision = {k[len(VISION_PREFIX):]: v for k, v in state_dict.items() if k.startswith(VISION_PREFIX)}
    out = {k: v for k, v in state_dict.items() if not k.startswith(VISION_PREFIX) and k != TEXT_POSITION_IDS}
    if vision:
        converted = swin_reference_to_ours(vision, window_size=window_size) if window_size else \
            swin_reference_to_ours(vision)
        out.update({VISION_PREFIX + k: v for k, v in converted.items()})
    return out


def ours_to_reference(state_dict: dict, vision_encoder: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """``CCLMPretrain`` keys -> the reference pre-training layout, with the text position-id buffer restored
    (and the Swin ``relative_position_index``/``attn_mask`` buffers when ``vision_encoder`` is given)."""
    state_dict = strip_prefixes(state_dict)
    vision = {k[len(VISION_PREFIX):]: v for k, v in state_dict.items() if k.startswith(VISION_PREFIX)}
    out = {k: v for k, v in state_dict.items() if not k.startswith(VISION_PREFIX)}
    if vision:
        converted = swin_ours_to_reference(vision, encoder=vision_encoder)
        out.update({VISION_PREFIX + k: v for k, v in converted.items()})
    positions = out.get("text_encoder.bert.embeddings.position_embeddings.weight")
    if positions is not None and TEXT_POSITION_IDS not in out:
        out[TEXT_POSITION_IDS] = torch.arange(positions.shape[0], device=positions.device).unsqueeze(0)
    return out

