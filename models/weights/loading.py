"""Loading a state dict into a model and reporting every key: missing, unexpected, dropped on purpose, and the new
task heads left at random initialisation."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from models.weights.files import read_state_dict
from models.weights.finetune import NEW_HEADS, convert_for_task
from models.weights.pretrain import reference_to_ours
from models.weights.swin import fit_bias_tables

logger = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """Keys the model expected but did not get, and keys it got but does not have."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


@dataclass
class TaskLoadReport(LoadReport):
    """A load report that also names the keys dropped on purpose and the heads left at random init."""

    dropped: dict[str, str] = field(default_factory=dict)
    initialised: list[str] = field(default_factory=list)


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


def load_checkpoint(model: nn.Module, checkpoint: str | Path | dict, is_eval: bool = False,
                    strict: bool = False) -> LoadReport:
    """Load a checkpoint file or state dict (any layout we read) into a CCLM model, by the model's ``task``:
    the pre-training model takes the pre-training layouts, a task model any layout through the reference's
    fine-tuning rules (:func:`load_task_checkpoint`). Every key change is logged and returned."""
    if model.task == "pretrain":
        return load_pretrain_checkpoint(model, checkpoint, strict=strict)
    return load_task_checkpoint(model, checkpoint, model.task, is_eval=is_eval, strict=strict,
                                num_fusion_pairs=getattr(model, "num_fusion_pairs", None),
                                num_dec_layers=getattr(model, "num_dec_layers", None))


def load_pretrain_checkpoint(model: nn.Module, checkpoint: str | Path | dict, strict: bool = False) -> LoadReport:
    """Load a reference-layout (or our) pre-training checkpoint into ``CCLMPretrain``, reporting every key."""
    what, state = _read(checkpoint)
    state = reference_to_ours(state, window_size=model.vision_encoder.window_size)
    return load_state_dict_reporting(model, state, what=what, strict=strict)


def load_task_checkpoint(model: nn.Module, checkpoint: str | Path | dict, task: str, is_eval: bool = False,
                         strict: bool = False, num_fusion_pairs: int | None = None,
                         num_dec_layers: int | None = None) -> TaskLoadReport:
    """Load a checkpoint file or state dict into a task model; log and return every missing, unexpected,
    dropped and newly initialised key by name (``strict`` raises on missing or unexpected ones)."""
    what, state = _read(checkpoint)
    converted, conversion = convert_for_task(state, task, window_size=model.vision_encoder.window_size,
                                             is_eval=is_eval, num_fusion_pairs=num_fusion_pairs,
                                             num_dec_layers=num_dec_layers)
    if not is_eval:
        fit_bias_tables(converted, model.state_dict())
    new_heads = NEW_HEADS[task]
    result = load_state_dict_reporting(model, converted, what=what, ignore_missing=new_heads or ())
    initialised = sorted(k for k in model.state_dict() if new_heads and k.startswith(new_heads) and k not in converted)
    for key, reason in conversion.dropped.items():
        logger.info("loading %s: dropped %s (%s)", what, key, reason)
    if initialised:
        logger.info("loading %s: new task head, randomly initialised: %s", what, ", ".join(initialised))
    if strict and (result.missing or result.unexpected):
        raise KeyError(f"loading {what} into the {task} model: missing {result.missing}, "
                       f"unexpected {result.unexpected}")
    return TaskLoadReport(missing=result.missing, unexpected=result.unexpected, dropped=conversion.dropped,
                          initialised=initialised)


def _read(checkpoint: str | Path | dict) -> tuple[str, dict]:
    """(how to name it in messages, its state dict) for a checkpoint file or an in-memory state dict."""
    if isinstance(checkpoint, dict):
        return "state dict", checkpoint
    return str(checkpoint), read_state_dict(checkpoint)
