"""Loading a checkpoint into a CCLM model: converted by the rules of the model's task, checked to fit (a
:class:`CheckpointMismatchError` in one line otherwise), loaded, and every key reported: missing, unexpected,
dropped on purpose, and the new task heads left at random initialisation."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from models.weights.errors import CheckpointMismatchError
from models.weights.files import read_state_dict
from models.weights.finetune import NEW_HEADS, ConversionReport, checkpoint_task, convert_for_task
from models.weights.keys import shape_mismatches, summary
from models.weights.pretrain import pretrain_to_ours
from models.weights.swin import fit_bias_tables

logger = logging.getLogger(__name__)

# How the messages name the model a checkpoint was made for (the values of ``checkpoint_task``).
MADE_FOR = {"pretrain": "CCLM pre-training", "retrieval": "retrieval", "classification": "classification (XVNLI)",
            "nlvr": "NLVR", "nlvr_domain": "NLVR domain pre-training", "vqa": "VQA (xGQA)", "": "unrecognised"}


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
                    strict: bool = False) -> TaskLoadReport:
    """Load a checkpoint file or state dict (any layout we read, docs/model.md#loading) into a CCLM model.

    It is converted by the rules of the model's ``task`` (:func:`convert_checkpoint`) and must fit
    (:func:`check_fits`; with ``is_eval`` it must hold every weight of the model). Every missing, unexpected,
    dropped and newly initialised key is logged and returned; ``strict`` raises on missing or unexpected ones.
    """
    what, state = _read(checkpoint)
    converted, conversion = convert_checkpoint(model, state, is_eval=is_eval, what=what)
    check_fits(model, state, converted, is_eval=is_eval, what=what)
    new_heads = NEW_HEADS.get(model.task, ())
    result = load_state_dict_reporting(model, converted, what=what, ignore_missing=new_heads)
    initialised = sorted(k for k in model.state_dict() if new_heads and k.startswith(new_heads) and k not in converted)
    for key, reason in conversion.dropped.items():
        logger.info("loading %s: dropped %s (%s)", what, key, reason)
    if initialised:
        logger.info("loading %s: new task head, randomly initialised: %s", what, ", ".join(initialised))
    if strict and (result.missing or result.unexpected):
        raise KeyError(f"loading {what} into the {model.task} model: missing {result.missing}, "
                       f"unexpected {result.unexpected}")
    return TaskLoadReport(missing=result.missing, unexpected=result.unexpected, dropped=conversion.dropped,
                          initialised=initialised)


def convert_checkpoint(model: nn.Module, state_dict: dict, is_eval: bool = False, what: str = "checkpoint"
                       ) -> tuple[dict, ConversionReport]:
    """``state_dict`` in ``model``'s keys: the pre-training layouts for ``CCLMPretrain``, the reference's fine-tuning
    rules for a task model; bias tables fitted to the model's windows. Works on ``meta`` tensors (keys and shapes
    only). A layout that does not convert is a :class:`CheckpointMismatchError`."""
    window = model.vision_encoder.window_size
    try:
        if model.task == "pretrain":
            converted, report = pretrain_to_ours(state_dict, window_size=window), ConversionReport()
        else:
            converted, report = convert_for_task(state_dict, model.task, window_size=window, is_eval=is_eval,
                                                 num_fusion_pairs=getattr(model, "num_fusion_pairs", None),
                                                 num_dec_layers=getattr(model, "num_dec_layers", None))
    except ValueError as err:
        raise CheckpointMismatchError(f"{what}: {_made_for(state_dict)} checkpoint that does not convert to the "
                                      f"{model.task} model: {err}") from err
    fit_bias_tables(converted, model.state_dict())
    return converted, report


def check_fits(model: nn.Module, state_dict: dict, converted: dict, is_eval: bool = False,
               what: str = "checkpoint") -> None:
    """Raise a one-line :class:`CheckpointMismatchError` naming the model the checkpoint was made for when its
    converted weights (``converted``) do not fit ``model``: weights of another shape, no weight of the model at
    all, or (``is_eval``: evaluating it as it is) any weight of the model missing, a new task head included."""
    own = model.state_dict()
    task = model.task
    wrong = shape_mismatches(converted, own)
    if wrong:
        raise CheckpointMismatchError(f"{what}: {_made_for(state_dict)} checkpoint does not fit the {task} model: "
                                      f"{len(wrong)} weight(s) have another shape: {summary(wrong)}")
    if not set(converted) & set(own):
        raise CheckpointMismatchError(f"{what}: {_made_for(state_dict)} checkpoint holds none of the {task} "
                                      f"model's weights (first keys: {', '.join(sorted(state_dict)[:3])})")
    missing = missing_weights(model, converted)
    if is_eval and missing:
        raise CheckpointMismatchError(f"{what}: {_made_for(state_dict)} checkpoint lacks {len(missing)} weight(s) "
                                      f"of the {task} model, which evaluation would use at random initialisation: "
                                      f"{summary(missing)}; evaluate a checkpoint fine-tuned on this task")


def missing_weights(model: nn.Module, converted: dict) -> list[str]:
    """The keys of ``model``'s state dict that ``converted`` does not provide (a tied weight counts as provided
    when its alias is)."""
    aliases = _tied_aliases(model)
    return [k for k in model.state_dict() if k not in converted and not (aliases.get(k, set()) & converted.keys())]


def _made_for(state_dict: dict) -> str:
    """'a retrieval', 'an NLVR', ...: the article and the model the checkpoint was made for."""
    name = MADE_FOR[checkpoint_task(state_dict)]
    return ("an " if name[0] in "aeiouAEIOUN" else "a ") + name


def _read(checkpoint: str | Path | dict) -> tuple[str, dict]:
    """(how to name it in messages, its state dict) for a checkpoint file or an in-memory state dict."""
    if isinstance(checkpoint, dict):
        return "state dict", checkpoint
    return str(checkpoint), read_state_dict(checkpoint)
