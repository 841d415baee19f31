"""Checkpoint I/O and pure state-dict filters between the reference layouts, Hugging Face XLM-R and our modules.

Our text encoder uses the reference's own names (``text_encoder.bert.*``, ``text_encoder.cls.*``), so the text part
of a reference checkpoint loads as is; the Swin part goes through the vision module's key conversion.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
VISION_PREFIX = "vision_encoder."
TEXT_POSITION_IDS = "text_encoder.bert.embeddings.position_ids"
# Hugging Face XLM-R buffers and the pooler have no counterpart in the CCLM text encoder.
XLMR_DROPPED = re.compile(r"^(roberta\.)?(embeddings\.(position_ids|token_type_ids)|pooler\.)")
XLMR_LM_HEAD_RENAMES = {
    "lm_head.bias": "cls.predictions.bias",
    "lm_head.dense.weight": "cls.predictions.transform.dense.weight",
    "lm_head.dense.bias": "cls.predictions.transform.dense.bias",
    "lm_head.layer_norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "lm_head.layer_norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "lm_head.decoder.weight": "cls.predictions.decoder.weight",
    "lm_head.decoder.bias": "cls.predictions.decoder.bias",
}
_LAYER_KEY = re.compile(r"^bert\.encoder\.layer\.(\d+)\.(.*)$")


@dataclass
class LoadReport:
    """Keys the model expected but did not get, and keys it got but does not have."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def strip_prefixes(state_dict: dict, prefixes: tuple[str, ...] = WRAPPER_PREFIXES) -> dict:
    """Remove DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes, however nested."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def load_reference_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.th``/``.pth``/``.pt`` ({'model': sd, ...} or a bare sd) or ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return strip_prefixes(load_file(str(path)))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe pickles
        raise RuntimeError(f"cannot read checkpoint {path}: not a torch checkpoint that loads with weights_only=True "
                           f"(corrupt, truncated, or not a checkpoint?): {type(err).__name__}: {err}") from err
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict or a dict with a 'model' state dict")
    return strip_prefixes(obj)


def xlmr_to_text_encoder(state_dict: dict, num_target_layers: int) -> dict[str, torch.Tensor]:
    """Hugging Face XLM-R (``XLMRobertaForMaskedLM`` or bare model) keys -> ``TextEncoder`` keys.

    ``roberta.`` becomes ``bert.``, the layers are selected as the reference selects them (odd layers when the
    source has twice as many), ``lm_head.*`` becomes ``cls.predictions.*``; the pooler and the position/token-type
    id buffers are dropped.
    """
    from models.text_encoder import layer_selection

    state_dict = strip_prefixes(state_dict)
    has_prefix = any(k.startswith("roberta.") for k in state_dict)
    renamed = {}
    for key, value in state_dict.items():
        if XLMR_DROPPED.match(key):
            logger.info("XLM-R conversion: dropping %s (no counterpart in the CCLM text encoder)", key)
            continue
        if key in XLMR_LM_HEAD_RENAMES:
            renamed[XLMR_LM_HEAD_RENAMES[key]] = value
        elif has_prefix and key.startswith("roberta."):
            renamed["bert." + key[len("roberta."):]] = value
        elif not has_prefix and key.split(".", 1)[0] in ("embeddings", "encoder"):
            renamed["bert." + key] = value
        else:
            renamed[key] = value  # left for the loader to report as unexpected
    source_layers = {int(m.group(1)) for k in renamed if (m := _LAYER_KEY.match(k))}
    if not source_layers:
        raise ValueError("XLM-R conversion: no 'roberta.encoder.layer.N.' keys found; is this an XLM-R checkpoint?")
    num_source = max(source_layers) + 1
    mapping = layer_selection(num_source, num_target_layers)
    out = {}
    for key, value in renamed.items():
        m = _LAYER_KEY.match(key)
        if m is None:
            out[key] = value
        elif int(m.group(1)) in mapping:
            out[f"bert.encoder.layer.{mapping[int(m.group(1))]}.{m.group(2)}"] = value
    return out


def reference_to_ours(state_dict: dict, window_size: int | None = None) -> dict[str, torch.Tensor]:
    """Reference pre-training layout (``CrossViewLM.state_dict()``) -> ``CCLMPretrain`` keys.

    Swin keys go through the vision module's conversion (bias tables resized to ``window_size`` when given);
    the text position-id buffer is dropped (we recompute it); every other key is already ours.
    """
    state_dict = strip_prefixes(state_dict)
    vision = {k[len(VISION_PREFIX):]: v for k, v in state_dict.items() if k.startswith(VISION_PREFIX)}
    out = {k: v for k, v in state_dict.items() if not k.startswith(VISION_PREFIX) and k != TEXT_POSITION_IDS}
    if vision:
        from models.vision import swin_reference_to_ours
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
        from models.vision import swin_ours_to_reference
        converted = swin_ours_to_reference(vision, encoder=vision_encoder)
        out.update({VISION_PREFIX + k: v for k, v in converted.items()})
    positions = out.get("text_encoder.bert.embeddings.position_embeddings.weight")
    if positions is not None and TEXT_POSITION_IDS not in out:
        out[TEXT_POSITION_IDS] = torch.arange(positions.shape[0], device=positions.device).unsqueeze(0)
    return out


def _tied_aliases(model: nn.Module) -> dict[str, set[str]]:
    """For each state-dict key, the other keys that share its tensor (tied weights)."""
    groups: dict[int, set[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), set()).add(name)
    return {name: group - {name} for group in groups.values() for name in group}


def load_state_dict_reporting(model: nn.Module, state_dict: dict, what: str = "checkpoint", strict: bool = False,
                              ignore_missing: tuple[str, ...] = ()) -> LoadReport:
    """Load non-strictly and log every missing and unexpected key by name; with ``strict``, raise on any.

    A missing key whose tied alias was loaded (e.g. the MLM decoder weight) is not missing. Missing keys that
    start with one of ``ignore_missing`` are expected (e.g. recomputed buffers) and only counted.
    """
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:
        raise RuntimeError(f"loading {what}: {err}") from err
    aliases = _tied_aliases(model)
    missing = [k for k in result.missing_keys if not (aliases.get(k, set()) & state_dict.keys())]
    ignored = [k for k in missing if k.startswith(ignore_missing)] if ignore_missing else []
    missing = [k for k in missing if k not in ignored]
    report = LoadReport(missing=missing, unexpected=list(result.unexpected_keys))
    if ignored:
        logger.info("loading %s: %d expected missing keys (prefixes %s)", what, len(ignored), ignore_missing)
    if report.missing:
        logger.warning("loading %s: %d missing keys: %s", what, len(report.missing), ", ".join(report.missing))
    if report.unexpected:
        logger.warning("loading %s: %d unexpected keys: %s", what, len(report.unexpected),
                       ", ".join(report.unexpected))
    if strict and (report.missing or report.unexpected):
        raise KeyError(f"loading {what}: missing {report.missing}, unexpected {report.unexpected}")
    return report
