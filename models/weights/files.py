"""Reading weight files: a state dict from ``.th``/``.pth``/``.pt``/``.bin`` ({'model': sd, ...} or a bare sd) or
``.safetensors``, never an arbitrary pickle (``weights_only=True``), with the wrapper prefixes removed."""
from __future__ import annotations

from pathlib import Path

import torch

from models.weights.keys import strip_prefixes


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a weight file (``{'model': sd, ...}`` or a bare sd), DDP / compile prefixes removed."""
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
