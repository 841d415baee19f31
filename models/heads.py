"""Small heads on top of the encoders: contrastive projections, the temperature, the ITM/box MLPs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TEMP_MIN, TEMP_MAX = 0.001, 0.5


def build_mlp(input_dim: int, output_dim: int) -> nn.Sequential:
    """Linear(d, 2d) -> LayerNorm(2d) -> GELU (erf) -> Linear(2d, out); indices 0..3 as in the reference keys."""
    return nn.Sequential(
        nn.Linear(input_dim, 2 * input_dim),
        nn.LayerNorm(2 * input_dim),
        nn.GELU(),
        nn.Linear(2 * input_dim, output_dim),
    )


def build_itm_head(width: int) -> nn.Sequential:
    """Match / no-match classifier on the fused CLS (class 1 = match)."""
    return build_mlp(width, 2)


def build_bbox_head(width: int) -> nn.Sequential:
    """Box regressor on the fused CLS; apply ``predict_box`` to get (cx, cy, w, h) in [0, 1]."""
    return build_mlp(width, 4)


def predict_box(bbox_head: nn.Module, fused_cls: torch.Tensor) -> torch.Tensor:
    """Normalised (cx, cy, w, h) box from the fused CLS state."""
    return bbox_head(fused_cls).sigmoid()


def build_projection(width: int, embed_dim: int) -> nn.Linear:
    """Linear projection of a CLS state into the shared contrastive space."""
    return nn.Linear(width, embed_dim)


def project_and_normalize(proj: nn.Module, embeds: torch.Tensor) -> torch.Tensor:
    """L2-normalised projection of token 0 of a B x L x D sequence."""
    return F.normalize(proj(embeds[:, 0, :]), dim=-1)


def build_temperature(init: float) -> nn.Parameter:
    """Learnable scalar contrastive temperature."""
    return nn.Parameter(torch.tensor(float(init)))


@torch.no_grad()
def clamp_temperature_(temp: torch.Tensor, low: float = TEMP_MIN, high: float = TEMP_MAX) -> torch.Tensor:
    """Clamp the temperature in place (the reference does this at the start of every pre-training forward)."""
    return temp.clamp_(low, high)
