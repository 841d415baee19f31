"""Reading weight files: a state dict from ``.th``/``.pth``/``.pt`` ({'model': sd, ...} or a bare sd) or
``.safetensors``, with the DDP / torch.compile wrapper prefixes removed."""
from __future__ import annotations

from pathlib import Path

import torch

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


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

