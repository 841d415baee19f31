"""Swin weights: the official / reference key layout <-> timm's (ours), relative-position bias-table
interpolation, and loading an official Swin ``.pth`` (or our own file) into the vision encoder.

Two state-dict layouts exist:
- reference / official Microsoft Swin: PatchMerging at the END of stage i (`layers.i.downsample`), buffers
  `relative_position_index` / `attn_mask` saved, a classifier `head.*` in the ImageNet files;
- ours (timm 1.x): PatchMerging at the START of stage i+1 (`layers.{i+1}.downsample`), buffers not saved, no head.
Block, patch-embedding and final-norm names are identical in both.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from scipy.interpolate import RectBivariateSpline

from models.weights.files import read_state_dict
from models.weights.errors import CheckpointMismatchError
from models.weights.keys import shape_mismatches, summary

logger = logging.getLogger(__name__)

VISION_PREFIX = "vision_encoder."  # the Swin keys' prefix in every CCLM checkpoint
BUFFER_NAMES = ("relative_position_index", "attn_mask")
TABLE_SUFFIX = "attn.relative_position_bias_table"
_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


def is_buffer_key(key: str) -> bool:
    """A Swin buffer (relative-position index, shifted-window mask): recomputed by the model, never loaded."""
    return key.split(".")[-1] in BUFFER_NAMES


# --------------------------------------------------------------------------------------------- bias tables

def interpolate_relative_position_bias_table(table: torch.Tensor, dst_rows: int) -> torch.Tensor:
    """Resize a ((2s-1)^2, heads) relative-position bias table to dst_rows rows as the reference does (BEiT)."""
    if table.dim() != 2:
        raise ValueError(f"relative_position_bias_table must be 2-D (rows, heads), got {tuple(table.shape)}")
    src_size = _square_side(table.shape[0], "source table rows")
    dst_size = _square_side(dst_rows, "dst_rows")
    if src_size == dst_size:
        return table
    if table.is_meta:
        return table.new_empty(dst_rows, table.shape[1])
    src_axis = _geometric_source_axis(src_size, dst_size)
    half = dst_size // 2
    dst_axis = np.arange(-half, half + 1, dtype=np.float64)
    values = table.detach().to("cpu", torch.float64).numpy()
    heads = []
    for head in range(values.shape[1]):
        grid = values[:, head].reshape(src_size, src_size)  # axis 0: row offset dy, axis 1: column offset dx
        spline = RectBivariateSpline(src_axis, src_axis, grid, kx=3, ky=3, s=0)
        heads.append(spline(dst_axis, dst_axis).reshape(-1))
    resized = torch.from_numpy(np.stack(heads, axis=1))
    return resized.to(device=table.device, dtype=table.dtype)


def _square_side(rows: int, what: str) -> int:
    side = math.isqrt(int(rows))
    if side * side != rows or side % 2 == 0:
        raise ValueError(f"{what} = {rows} is not (2w-1)^2 for an integer window w")
    return side


def _geometric_source_axis(src_size: int, dst_size: int) -> np.ndarray:
    """Source offsets spread geometrically so the outermost one lands near dst_size // 2."""
    steps, target = src_size // 2, dst_size // 2
    low, high = 1.01, 1.5
    while high - low > 1e-6:
        ratio = (low + high) / 2.0
        if _geometric_sum(ratio, steps) > target:
            high = ratio
        else:
            low = ratio
    # The reference uses the last midpoint tried, not either bound.
    offsets, position = [], 1.0
    for i in range(steps):
        offsets.append(position)
        position += ratio ** (i + 1)
    return np.array([-d for d in reversed(offsets)] + [0.0] + offsets, dtype=np.float64)


def _geometric_sum(ratio: float, terms: int) -> float:
    return (1.0 - ratio ** terms) / (1.0 - ratio)


# --------------------------------------------------------------------------------------------- key layouts

def swin_reference_to_ours(state_dict: dict[str, torch.Tensor],
                           window_size: int | None = None) -> dict[str, torch.Tensor]:
    """Reference/official Swin keys (no `vision_encoder.` prefix) -> timm keys; drops buffers and head.*."""
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("vision_encoder."):
            raise ValueError(f"key {key!r}: strip the 'vision_encoder.' prefix before converting")
        if key.startswith("head.") or is_buffer_key(key):
            continue
        if key.endswith(TABLE_SUFFIX) and window_size is not None:
            value = interpolate_relative_position_bias_table(value, (2 * window_size - 1) ** 2)
        converted[_shift_downsample(key, +1)] = value
    return converted


def swin_ours_to_reference(state_dict: dict[str, torch.Tensor],
                           encoder: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """timm keys -> reference keys; with `encoder`, adds its relative_position_index / attn_mask buffers too."""
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("layers.0.downsample."):
            raise ValueError(f"key {key!r}: stage 0 has no downsample in our layout; is this already the reference's?")
        converted[_shift_downsample(key, -1)] = value
    if encoder is not None:
        for key, buffer in encoder.named_buffers():
            if is_buffer_key(key):
                converted[key] = buffer  # block buffers keep their names in both layouts
    return converted


def _shift_downsample(key: str, offset: int) -> str:
    match = _DOWNSAMPLE.match(key)
    if not match:
        return key
    return f"layers.{int(match.group(1)) + offset}.downsample." + key[match.end():]


def is_reference_layout(state_dict: dict[str, torch.Tensor]) -> bool:
    """True for the official/reference layout: only it has a PatchMerging in stage 0."""
    return any(key.startswith("layers.0.downsample.") for key in state_dict)


# --------------------------------------------------------------------------------------------- loading

def load_official_swin(encoder: nn.Module, path: str | Path) -> dict:
    """Load an official Swin `.pth` ({'model': sd}) or our own .pth/.safetensors; report missing/unexpected keys."""
    path = Path(path)
    state_dict = read_state_dict(path)
    ignored_head = sorted(k for k in state_dict if k.startswith("head."))
    if is_reference_layout(state_dict):
        state_dict = swin_reference_to_ours(state_dict)
    else:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.") and not is_buffer_key(k)}
    own = encoder.state_dict()
    if not set(state_dict) & set(own):
        raise CheckpointMismatchError(f"{path}: none of its {len(state_dict)} keys is a Swin encoder key (first: "
                                      f"{sorted(state_dict)[:3]}); the vision config's 'ckpt' must be a Swin "
                                      "checkpoint (official layout, or ours without the 'vision_encoder.' prefix)")
    fit_bias_tables(state_dict, own)
    wrong = shape_mismatches(state_dict, own)
    if wrong:
        raise CheckpointMismatchError(f"{path}: {len(wrong)} weight(s) have another shape than the Swin encoder of "
                                      f"the vision config (is the vision config right?): {summary(wrong)}")
    result = encoder.load_state_dict(state_dict, strict=False)
    report = {"path": str(path), "missing": sorted(result.missing_keys),
              "unexpected": sorted(result.unexpected_keys) + ignored_head}
    if report["missing"] or report["unexpected"]:
        logger.warning("%s: missing keys %s; unexpected keys (ignored) %s", path, report["missing"],
                       report["unexpected"])
    return report


def fit_bias_tables(state_dict: dict, own: dict) -> None:
    """Resize (in place) every bias table of ``state_dict`` whose row count differs from the one of the same key in
    ``own`` (a model's state dict; each block's window is clamped to its stage size); head-count differences are
    left for the shape check to report."""
    for key, value in list(state_dict.items()):
        if key.endswith(TABLE_SUFFIX) and key in own and value.shape[0] != own[key].shape[0] \
                and value.shape[1:] == own[key].shape[1:]:
            state_dict[key] = interpolate_relative_position_bias_table(value, own[key].shape[0])
