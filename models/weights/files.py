"""Reading weight files: a state dict from ``.th``/``.pth``/``.pt``/``.bin`` ({'model': sd, ...} or a bare sd) or
``.safetensors``, never an arbitrary pickle (``weights_only=True``), with the wrapper prefixes removed. Every failure
is a :class:`WeightsFileError` naming the file (docs/model.md#weight-files)."""
from __future__ import annotations

from pathlib import Path

import torch

from models.weights.errors import WeightsFileError
from models.weights.keys import strip_prefixes

# safetensors' dtype names -> torch dtypes (for reading shapes without the values)
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def read_checkpoint(path: str | Path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict | None]:
    """(the state dict of a weight file, the run config saved beside it in ``{'model': sd, 'config': ...}`` or None).

    On ``device='meta'`` no tensor value is read (keys, shapes and dtypes only)."""
    path = _existing(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path, device), None
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt, truncated or unsafe pickles
        raise WeightsFileError(f"cannot read checkpoint {path}: not a torch checkpoint that loads with "
                               f"weights_only=True (corrupt, truncated, not a checkpoint, or a pickle of other "
                               f"objects?): {_one_line(err)}") from err
    config = None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        config = obj.get("config") if isinstance(obj.get("config"), dict) else None
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsFileError(f"{path}: expected a state dict or a dict with a 'model' state dict, got "
                               f"{_describe(obj)}")
    return strip_prefixes(obj), config


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a weight file (``{'model': sd, ...}`` or a bare sd), DDP / compile prefixes removed."""
    return read_checkpoint(path)[0]


def read_tensor_shapes(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a weight file as ``meta`` tensors: its keys, shapes and dtypes, no value read."""
    return read_checkpoint(path, device="meta")[0]


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"checkpoint {path} does not exist" if not path.exists()
                               else f"checkpoint {path} is not a file")
    return path


def _read_safetensors(path: Path, device: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        if device != "meta":
            state = load_file(str(path), device=device)
        else:
            with safe_open(str(path), framework="pt") as f:
                state = {key: torch.empty(f.get_slice(key).get_shape(), device="meta",
                                          dtype=SAFETENSORS_DTYPES.get(f.get_slice(key).get_dtype(), torch.float32))
                         for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsFileError(f"cannot read {path}: not a valid safetensors file (corrupt header or truncated "
                               f"data?): {_one_line(err)}") from err
    if not state:
        raise WeightsFileError(f"{path}: the safetensors file holds no tensor")
    return strip_prefixes(state)


def _describe(obj) -> str:
    if isinstance(obj, dict):
        odd = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
        return "an empty dict" if not obj else f"a dict whose entry {odd!r} is a {type(obj[odd]).__name__}"
    return f"a {type(obj).__name__}"


def _one_line(err: Exception) -> str:
    """The telling line of a library error (torch's weights_only errors span many lines), for a one-line message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    telling = next((line for line in lines if "WeightsUnpickler error" in line), lines[0] if lines else "")
    return f"{type(err).__name__}: {telling[:300]}"
