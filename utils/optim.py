"""AdamW with the original's parameter groups, and per-step learning-rate schedules."""
from __future__ import annotations

import logging
import math
from typing import Iterable, Mapping

import torch
from torch import nn

logger = logging.getLogger(__name__)

# A parameter whose name contains any of these substrings is not weight-decayed (the original's rule, kept verbatim:
# it also spares Swin's relative_position_bias_table and decays the LayerNorm weights inside the MLP heads).
NO_DECAY_SUBSTRINGS = ("bias", "LayerNorm.bias", "LayerNorm.weight", "norm.bias", "norm.weight",
                       "norm1.bias", "norm1.weight", "norm2.bias", "norm2.weight")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DDP and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def is_no_decay(name: str) -> bool:
    """True when the original's name rule exempts this parameter from weight decay."""
    return any(s in name for s in NO_DECAY_SUBSTRINGS)


def param_groups(model: nn.Module, lr: float, weight_decay: float, lr_mult: float = 1.0,
                 init_params: Iterable[str] = ()) -> list[dict]:
    """Four groups: (decay, no decay) x (pretrained at ``lr``, newly initialised at ``lr * lr_mult``).

    Names are those of the unwrapped model, so the multiplier also applies under DDP (the original's did not:
    its names carried DDP's ``module.`` prefix and never matched).
    """
    model = unwrap_model(model)
    new = set(init_params)
    named = dict(model.named_parameters())
    unknown = sorted(n for n in new if n not in named)
    if unknown:
        logger.debug("init_params not found among parameters (ignored): %s", unknown[:10])
    groups = {(d, m): [] for d in (True, False) for m in (False, True)}
    for name, p in named.items():
        if p.requires_grad:
            groups[(not is_no_decay(name), name in new)].append((name, p))
    out = []
    for (decay, is_new), items in groups.items():
        if items:
            out.append({"params": [p for _, p in items], "names": [n for n, _ in items],
                        "weight_decay": weight_decay if decay else 0.0, "lr": lr * (lr_mult if is_new else 1.0),
                        "lr_scale": lr_mult if is_new else 1.0})
    return out


def build_optimizer(model: nn.Module, opt_cfg: Mapping, init_params: Iterable[str] = ()) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.98, eps 1e-8 by default) over the original's four parameter groups."""
    name = str(opt_cfg.get("opt", "adamW")).lower()
    if name != "adamw":
        raise ValueError(f"optimizer.opt: only adamW is supported, got {opt_cfg.get('opt')!r}")
    groups = param_groups(model, float(opt_cfg["lr"]), float(opt_cfg.get("weight_decay", 0.01)),
                          float(opt_cfg.get("lr_mult", 1.0)), init_params)
    betas = tuple(float(b) for b in opt_cfg.get("betas", (0.9, 0.98)))
    fused = opt_cfg.get("fused", "auto")
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    use_fused = on_cuda if fused == "auto" else bool(fused)
    kwargs = {"fused": True} if use_fused else {}
    return torch.optim.AdamW(groups, lr=float(opt_cfg["lr"]), betas=betas, eps=float(opt_cfg.get("eps", 1e-8)),
                             **kwargs)


def schedule_factor(step: int, total_steps: int, warmup_steps: int, kind: str = "linear") -> float:
    """LR multiplier at ``step``: linear warm-up from 0, then linear (or cosine) decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if kind == "constant":
        return 1.0
    raise ValueError(f"schedular.sched must be linear, cosine or constant; got {kind!r}")


def warmup_steps_from(value, total_steps: int) -> int:
    """``num_warmup_steps``: an int, or a float in [0, 1) meaning a fraction of the total."""
    value = float(value)
    return int(value * total_steps) if 0 <= value < 1 else int(value)


def build_scheduler(optimizer: torch.optim.Optimizer, sched_cfg: Mapping,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR over every group's own lr (so the lr multiplier survives)."""
    warmup = warmup_steps_from(sched_cfg.get("num_warmup_steps", 0.1), total_steps)
    kind = str(sched_cfg.get("sched", "linear"))
    schedule_factor(0, total_steps, warmup, kind)  # validates the kind early
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: schedule_factor(s, total_steps, warmup, kind))
