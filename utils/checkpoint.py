"""Training checkpoints: atomic writes, latest/best files, full resume state, safe loading.

``checkpoint_latest.pth`` is the run's commit record: it holds the model, the optimiser and the rest of the resume
state, the evaluation history and the pointer to the best evaluation. ``checkpoint_best.pth`` (the weights of the
best evaluation) is written after it, from the same state, so a crash between the two leaves a latest file whose
best evaluation is its own step; :func:`reconcile_best` re-derives the best file from it when the run resumes.
"""
from __future__ import annotations

import logging
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from utils.atomic import atomic_write
from utils.errors import UserError

logger = logging.getLogger(__name__)

LATEST = "checkpoint_latest.pth"
BEST = "checkpoint_best.pth"
BEST_KEYS = ("model", "epoch", "step", "config", "best", "evaluations")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used: missing, damaged, unsafe, or of the wrong kind; the message names the file
    and what to do. (Also a RuntimeError, what loading raised before, for callers that catch that.)"""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """The checkpoint asked for does not exist."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename: a crash never leaves half a file,
    and a failed write (a full disk) removes its temporary file and leaves the previous file intact."""
    path = Path(path)
    return atomic_write(path, lambda f: torch.save(obj, f),
                        kept=f"{path.name} is as it was before this write (once there is room, --resume latest "
                             "continues the run)")


def load_file(path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """Load a ``.pth``/``.th``/``.bin`` with ``weights_only=True`` or a ``.safetensors`` file; never arbitrary pickle.

    A file that is missing, damaged or unsafe is a :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingCheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file as load_safetensors

        try:
            return load_safetensors(str(path), device=str(map_location))
        except Exception as e:  # the library's errors name neither the file nor the cause a user can act on
            raise CheckpointError(f"{path} cannot be loaded as safetensors (corrupt header or truncated data?): "
                                  f"{type(e).__name__}: {_first_line(e)}; copy it again, or use another "
                                  "checkpoint") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # a pickle with arbitrary objects, or a damaged file
        raise CheckpointError(unreadable_checkpoint_message(path, e)) from None


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def unreadable_checkpoint_message(path: str | os.PathLike, error: BaseException) -> str:
    """One line saying why ``path`` cannot be loaded safely and what to do. An unsafe pickle (one that names Python
    objects other than tensors and plain containers) is refused; loading it anyway could run code from the file, so
    the message never suggests that."""
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    found = _GLOBAL.search(text)
    if isinstance(error, pickle.UnpicklingError) and found:
        return (f"{path} is unsafe to load: it holds Python objects other than tensors (it names {found.group(1)}), "
                "and unpickling them could run code from the file; it is refused. Use a checkpoint of tensors only "
                "(one this code wrote, a released CCLM checkpoint, or a .safetensors file)")
    # torch's first line of a weights-only failure is advice about its own option; the telling line comes later
    telling = next((lines[i + 1] for i, line in enumerate(lines[:-1]) if line.endswith("WeightsUnpickler error:")),
                   lines[0] if lines else type(error).__name__)
    first = telling.split(". This is an internal")[0][:160]
    return (f"{path} cannot be loaded: it is damaged or incomplete ({type(error).__name__}: {first}); it was probably "
            "cut short by a crash, a full disk or an interrupted copy: copy it again, or use another checkpoint")


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
        atomic_torch_save(best_state(state), out / BEST)
    return latest


def best_state(state: Mapping) -> dict:
    """What ``checkpoint_best.pth`` holds of a training state: the weights, their step and the evaluation history."""
    return {k: state.get(k) for k in BEST_KEYS}


def saved_step(path: str | os.PathLike) -> int | None:
    """The training step a checkpoint file was saved at (its tensors are not read), None when it has none or cannot be
    read."""
    try:
        state = load_file(path, mmap=True)
    except CheckpointError:
        return None
    step = state.get("step") if isinstance(state, Mapping) else None
    return int(step) if isinstance(step, int) else None


def reconcile_best(output_dir: str | os.PathLike, state: Mapping, want: int | None) -> str | None:
    """Make ``checkpoint_best.pth`` hold the weights of step ``want``, the best evaluation of the history in the
    training ``state`` a run resumes from; returns what was done (for the log), None when the file already agreed.

    The best file is written after the latest one, so a crash between them leaves a best evaluation at the latest
    file's own step: the best file is re-derived from that state. A best file of another step (a resume from an older
    checkpoint, or an earlier run in the folder) is moved aside, re-derived from ``checkpoint_step_<S>.pth`` when that
    exists; otherwise the next better evaluation writes it again."""
    out = Path(output_dir)
    path = out / BEST
    have = saved_step(path) if path.is_file() else None
    if have is not None and have == want:
        return None
    source = None
    if want is not None and want == state.get("step"):
        source = state
    elif want is not None and saved_step(out / f"checkpoint_step_{want}.pth") == want:
        source = load_file(out / f"checkpoint_step_{want}.pth")
    aside = None
    if path.is_file() and source is None:
        aside = out / f"checkpoint_best.step{have if have is not None else 'unknown'}.pth"
        os.replace(path, aside)
    if source is not None:
        atomic_torch_save(best_state(source), path)
        return (f"{BEST} re-derived for the best evaluation (step {want}): the interrupted run had not written it"
                + (f" (it held step {have})" if have is not None else ""))
    if aside is not None:
        return (f"{BEST} held step {have}, which is not this run's best evaluation "
                f"({'step ' + str(want) if want is not None else 'none yet'}); moved to {aside.name}"
                + ("" if want is None else f"; no saved weights of step {want} remain, the next better evaluation "
                   "writes the file again"))
    if want is not None:
        return (f"{BEST} is missing and no saved weights of the best evaluation (step {want}) remain; the next better "
                "evaluation writes it again")
    return None


def find_resume_file(resume: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """``latest`` -> ``output_dir/checkpoint_latest.pth``; a folder -> its latest file; a file -> itself."""
    if str(resume) == "latest":
        path = Path(output_dir) / LATEST
    else:
        path = Path(resume)
        if path.is_dir():
            path = path / LATEST
    if not path.is_file():
        raise MissingCheckpointError(f"--resume {resume}: no checkpoint at {path} (to start a new run, leave out "
                                     "--resume)")
    return path


def load_training_state(path: str | os.PathLike) -> dict:
    """Read a resume payload written by :func:`save_training_state`, checking that it is one."""
    state = load_file(path)
    required = ("model", "optimizer", "epoch", "step", "rng")
    missing = [k for k in required if not isinstance(state, Mapping) or k not in state]
    if missing:
        raise CheckpointError(f"--resume {path}: not a training checkpoint (it has no {', '.join(missing)}); "
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
