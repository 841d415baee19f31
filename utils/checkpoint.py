"""Training checkpoints: atomic writes, latest/best files, full resume state, safe loading."""
from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

logger = logging.getLogger(__name__)

LATEST = "checkpoint_latest.pth"
BEST = "checkpoint_best.pth"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a ``.pth``/``.th``/``.bin`` with ``weights_only=True`` or a ``.safetensors`` file; never arbitrary pickle."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file as load_safetensors

        try:
            return load_safetensors(str(path), device=str(map_location))
        except Exception as e:  # the library's errors name neither the file nor the cause a user can act on
            raise RuntimeError(f"{path}: cannot be loaded as safetensors (corrupt header or truncated data?): "
                               f"{type(e).__name__}: {e}") from e
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a pickle with arbitrary objects, or a damaged file
        raise RuntimeError(f"{path}: cannot be loaded safely (weights_only=True): {e}") from e


def rng_state() -> dict:
    """Every RNG the training touches, so a resumed run draws what the uninterrupted one would have."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    """Restore what :func:`rng_state` saved."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), int(np_state[2]), int(np_state[3]),
                         float(np_state[4])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rng_for_saving(state: Mapping) -> dict:
    # weights_only loading accepts tensors, numbers, strings and containers: make the numpy state plain.
    np_state = state["numpy"]
    out = dict(state)
    out["numpy"] = [np_state[0], torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), int(np_state[2]),
                    int(np_state[3]), float(np_state[4])]
    out["python"] = [state["python"][0], list(state["python"][1]), state["python"][2]]
    return out


def _rng_from_saved(state: Mapping) -> dict:
    out = dict(state)
    np_state = state["numpy"]
    out["numpy"] = (np_state[0], np_state[1].numpy().astype(np.uint32), np_state[2], np_state[3], np_state[4])
    return out


def training_state(model, optimizer=None, scheduler=None, scaler=None, *, epoch: int, step: int,
                   batches_in_epoch: int, config: Mapping | None = None, best: Mapping | None = None,
                   evaluations: Mapping | None = None, extra: Mapping | None = None,
                   rng_per_rank: list | None = None, run_shape: Mapping | None = None) -> dict:
    """The resume payload: model, optimiser, scheduler, scaler, position in the data, RNG states, config.

    ``rng`` is this process's RNG state; ``rng_per_rank`` (every rank's :func:`rng_state`, in rank order) lets each
    process of a multi-process run resume its own streams (dropout masks, hard-negative draws differ per rank).
    ``run_shape`` (world size, steps per epoch, total steps) lets a resume notice that the run's shape changed.
    ``best`` points at the best evaluation; ``evaluations`` is the run's evaluation history (utils.schedule).
    """
    from utils.optim import unwrap_model

    return {
        "rng_per_rank": [_rng_for_saving(s) for s in rng_per_rank] if rng_per_rank else None,
        "run_shape": dict(run_shape) if run_shape is not None else None,
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch, "step": step, "batches_in_epoch": batches_in_epoch,
        "rng": _rng_for_saving(rng_state()),
        "config": dict(config) if config is not None else None,
        "best": dict(best) if best is not None else None,
        "evaluations": dict(evaluations) if evaluations is not None else None,
        "extra": dict(extra) if extra is not None else None,
    }


def save_training_state(output_dir: str | os.PathLike, state: Mapping, *, is_best: bool = False,
                        step_file: bool = False) -> Path:
    """Write ``checkpoint_latest.pth`` (and ``checkpoint_best.pth`` / ``checkpoint_step_N.pth`` when asked)."""
    out = Path(output_dir)
    latest = atomic_torch_save(state, out / LATEST)
    if step_file:
        atomic_torch_save(state, out / f"checkpoint_step_{state['step']}.pth")
    if is_best:
        atomic_torch_save({k: state.get(k) for k in ("model", "epoch", "step", "config", "best", "evaluations")},
                          out / BEST)
    return latest


def find_resume_file(resume: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """``latest`` -> ``output_dir/checkpoint_latest.pth``; a folder -> its latest file; a file -> itself."""
    if str(resume) == "latest":
        path = Path(output_dir) / LATEST
    else:
        path = Path(resume)
        if path.is_dir():
            path = path / LATEST
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: no checkpoint at {path}")
    return path


def load_training_state(path: str | os.PathLike) -> dict:
    """Read a resume payload written by :func:`save_training_state`, checking that it is one."""
    state = load_file(path)
    missing = [k for k in ("model", "optimizer", "epoch", "step", "rng") if k not in state]
    if missing:
        raise KeyError(f"{path}: not a training checkpoint (missing {', '.join(missing)}); "
                       "to start from model weights use --checkpoint instead of --resume")
    state["rng"] = _rng_from_saved(state["rng"])
    if state.get("rng_per_rank"):
        state["rng_per_rank"] = [_rng_from_saved(s) for s in state["rng_per_rank"]]
    return state


def rng_state_for_rank(state: Mapping, rank: int, world_size: int) -> Mapping | None:
    """The RNG state rank ``rank`` of ``world_size`` should resume with: its own when the checkpoint holds one per
    rank of the same world size; the single saved state for a one-process run; None when the run's size changed
    (or an older checkpoint kept only rank 0's), where no saved state is right for every rank."""
    per_rank = state.get("rng_per_rank")
    if per_rank and len(per_rank) == world_size:
        return per_rank[rank]
    if world_size == 1 and not per_rank:
        return state["rng"]
    return None


_PREFIX = re.compile(r"^(module\.|_orig_mod\.)+")


def clean_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Strip DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes."""
    return {_PREFIX.sub("", k): v for k, v in state_dict.items()}


def model_state_from_file(obj: Any, where: str = "checkpoint") -> dict:
    """The state dict inside a loaded file: ``{'model': sd, ...}`` or a bare state dict."""
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        return clean_state_dict(obj["model"])
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return clean_state_dict(obj)
    raise KeyError(f"{where}: neither a state dict nor a dict with a 'model' entry")
