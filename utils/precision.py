"""Mixed precision with native torch.amp; maps the original apex-style ``accelerator:`` block onto it."""
from __future__ import annotations

import contextlib
import logging
from typing import Mapping

import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_precision(config: Mapping, device: torch.device) -> str:
    """Pick fp32/bf16/fp16 from ``precision`` (auto|fp32|bf16|fp16) and the apex ``accelerator.FP16_OPT_LEVEL``.

    ``auto`` follows the original's opt level: O0 -> fp32; O1/O2/O3 -> bf16 on GPUs that support it (fp16 with a
    GradScaler otherwise). On CPU ``auto`` gives fp32: CPU autocast is slower than fp32 on most CPUs.
    """
    wanted = str(config.get("precision", "auto") or "auto").lower()
    if wanted not in PRECISIONS + ("auto",):
        raise ValueError(f"config key 'precision' must be one of auto, {', '.join(PRECISIONS)}; got {wanted!r}")
    if wanted != "auto":
        return wanted
    level = str((config.get("accelerator") or {}).get("FP16_OPT_LEVEL", "O0")).upper()
    if level == "O0" or device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def autocast_context(precision: str, device: torch.device):
    """A context manager that autocasts to the chosen precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.amp.autocast(device_type=device.type, dtype=dtype)


def build_grad_scaler(precision: str, config: Mapping, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 only; ``accelerator.FP16_LOSS_SCALE`` is 'dynamic' or a fixed number."""
    if precision != "fp16":
        return None
    scale = (config.get("accelerator") or {}).get("FP16_LOSS_SCALE", "dynamic")
    if str(scale).lower() == "dynamic":
        # apex O1 capped the dynamic scale at 2**10 in the original configs; torch's default start is higher but adapts.
        return torch.amp.GradScaler(device.type)
    # A fixed scale never grows; torch insists on a back-off factor < 1, so an overflow still halves it (apex's static
    # scale would have kept it and applied the bad step: skipping is the safer behaviour).
    return torch.amp.GradScaler(device.type, init_scale=float(scale), growth_interval=2**31 - 1)
