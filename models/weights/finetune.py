"""The fine-tuning models' checkpoint layouts: pure state-dict filters between them.

Three layouts meet here (every key below is relative to the full model):
- the reference PRE-TRAINING layout (``CrossViewLM``): official Swin keys with their buffers, ``text_encoder.bert.*``,
  ``text_encoder.cls.*`` (MLM head), ``text_proj``, ``vision_proj``, ``temp``, ``itm_head``, ``bbox_head``;
- the reference FINE-TUNING layouts (released task checkpoints, and the NLVR domain pre-training checkpoint):
  official Swin keys with buffers, a bare encoder ``text_encoder.{embeddings,encoder}.*`` and the task's heads (VQA
  adds ``text_decoder.{bert,cls}.*``; NLVR and NLVR domain pre-training have 18 text layers);
- OURS: timm Swin keys without buffers, ``text_encoder.bert.*`` (our ``TextEncoder``, no MLM head), no position-id
  buffers, the same head names as the reference.

``pretrain_to_task_reference`` applies the reference's fine-tuning load rules (docs/model.md#fine-tuning-rules): it
turns a pre-training state dict into the task's reference layout. ``task_reference_to_ours`` /
``ours_to_task_reference`` only rename between the reference task layout and ours. ``convert_for_task`` detects the
layout of any input (our own pre-training and task checkpoints included: they are first brought to the reference
layout) and chains the right steps. Every key that is removed on purpose is listed, with the reason, in a
``ConversionReport``; nothing disappears silently.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from models.weights.keys import (add_prefix, layer_indices, layer_key_pattern, renamed, split_prefix,
                                 strip_prefixes)
from models.weights.pretrain import ours_to_reference, position_ids
from models.weights.swin import (TABLE_SUFFIX, VISION_PREFIX, interpolate_relative_position_bias_table,
                                 is_buffer_key, is_reference_layout, swin_ours_to_reference, swin_reference_to_ours)

logger = logging.getLogger(__name__)

TASKS = ("retrieval", "classification", "nlvr", "nlvr_domain", "vqa")
# The two-image tasks: paired fusion layers (a 12-layer encoder gets each fusion layer duplicated), shared K/V.
TWO_IMAGE_TASKS = ("nlvr", "nlvr_domain")
# Top-level modules of each task model (identical names in the reference task layout and in ours).
TASK_MODULES = {
    "retrieval": ("vision_encoder", "text_encoder", "vision_proj", "text_proj", "temp", "itm_head"),
    "classification": ("vision_encoder", "text_encoder", "cls_head"),
    "nlvr": ("vision_encoder", "text_encoder", "cls_head"),
    "nlvr_domain": ("vision_encoder", "text_encoder", "vision_proj", "ta_head"),
    "vqa": ("vision_encoder", "text_encoder", "text_decoder"),
}
# Heads that no pre-trained checkpoint provides: they start from random init (the reference's init_params).
NEW_HEADS = {"retrieval": (), "classification": ("cls_head.",), "nlvr": ("cls_head.",), "nlvr_domain": ("ta_head.",),
             "vqa": ()}

TEXT_ENCODER_BARE = ("text_encoder.embeddings.", "text_encoder.encoder.")
POSITION_IDS = ("text_encoder.embeddings.position_ids", "text_decoder.bert.embeddings.position_ids")
# the reference's bare fine-tuning text encoder <-> ours (which keeps the pre-training 'bert.' level)
_BARE_TO_OURS = tuple((prefix, "text_encoder.bert." + prefix[len("text_encoder."):]) for prefix in TEXT_ENCODER_BARE)
_OURS_TO_BARE = (("text_encoder.bert.", "text_encoder."),)
_ENCODER_TO_DECODER = (("text_encoder.", "text_decoder."),)
# our position table -> the reference's position-id buffer next to it
OUR_POSITION_TABLES = {
    "text_encoder.bert.embeddings.position_embeddings.weight": "text_encoder.embeddings.position_ids",
    "text_decoder.bert.embeddings.position_embeddings.weight": "text_decoder.bert.embeddings.position_ids",
}
_ENCODER_LAYER = layer_key_pattern("text_encoder.")
_PRETRAIN_LAYER = layer_key_pattern("text_encoder.bert.")

SWIN_BUFFER_REASON = "Swin buffer, recomputed by the model"
POSITION_IDS_REASON = "text position-id buffer, recomputed by the model (ids 0..L-1)"
# Why a reference pre-training module is not carried into a task model.
_DROP_REASONS = {
    "text_encoder.cls.": "the MLM head of pre-training; the task model has a bare encoder",
    "bbox_head.": "the box head of pre-training; no task model uses it",
    "itm_head.": "the matching head of pre-training; only retrieval uses it",
    "text_proj.": "a contrastive projection; only retrieval uses it",
    "vision_proj.": "a contrastive projection; only retrieval and NLVR domain pre-training use it",
    "temp": "the contrastive temperature; only retrieval uses it",
    "ta_head.": "the NLVR domain pre-training head (left/right/neither); only that pre-training uses it (NLVR has "
                "cls_head instead)",
}


@dataclass
class ConversionReport:
    """Keys removed on purpose by a conversion, each with the reason."""

    dropped: dict[str, str] = field(default_factory=dict)

    def drop(self, key: str, reason: str) -> None:
        self.dropped[key] = reason

    def merge(self, other: "ConversionReport") -> "ConversionReport":
        self.dropped.update(other.dropped)
        return self


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown fine-tuning task {task!r}; expected one of {TASKS}")


# --------------------------------------------------------------------------------------------- layout detection

def detect_layout(state_dict: dict) -> str:
    """'reference_pretrain', 'reference_finetune', 'ours_pretrain' or 'ours_finetune', from the Swin key layout, the
    text encoder names and (for ours) the MLM head, which only a pre-training model has."""
    keys = list(state_dict)
    vision, _ = split_prefix(state_dict, VISION_PREFIX)
    has_bert = any(k.startswith("text_encoder.bert.") for k in keys)
    has_bare = any(k.startswith(TEXT_ENCODER_BARE) for k in keys)
    if has_bert and has_bare:
        raise ValueError("checkpoint mixes 'text_encoder.bert.*' and bare 'text_encoder.{embeddings,encoder}.*' keys "
                         f"(e.g. {next(k for k in keys if k.startswith('text_encoder.bert.'))!r} and "
                         f"{next(k for k in keys if k.startswith(TEXT_ENCODER_BARE))!r})")
    if not has_bert and not has_bare:
        raise ValueError(f"checkpoint has no text encoder keys (text_encoder.*); first keys: {keys[:3]}")
    reference_vision = is_reference_layout(vision) if vision else None
    if has_bare:
        if reference_vision is False:
            raise ValueError("checkpoint has a bare reference text encoder but timm-layout Swin keys; "
                             "it is neither a reference fine-tuning checkpoint nor ours")
        return "reference_finetune"
    if reference_vision is None:
        raise ValueError("checkpoint with 'text_encoder.bert.*' keys but no vision_encoder.* keys: cannot tell a "
                         "reference pre-training checkpoint from one of ours")
    if reference_vision:
        return "reference_pretrain"
    return "ours_pretrain" if any(k.startswith("text_encoder.cls.") for k in keys) else "ours_finetune"


def checkpoint_task(state_dict: dict) -> str:
    """The model a state dict was made for: 'pretrain', one of ``TASKS``, or '' when its keys do not say.

    Pre-training has the MLM head (or the reference pre-training layout); then the heads decide: ``text_decoder``
    (vqa), ``ta_head`` (nlvr_domain), ``itm_head`` (retrieval), ``cls_head`` (nlvr when the encoder has twice as
    many fusion layers as text-only ones, as a two-image encoder of an even base depth has, else classification).
    """
    try:
        layout = detect_layout(state_dict)
    except ValueError:
        return ""
    if layout.endswith("pretrain"):
        return "pretrain"
    heads = {key.split(".", 1)[0] for key in state_dict}
    for head, task in (("text_decoder", "vqa"), ("ta_head", "nlvr_domain"), ("itm_head", "retrieval")):
        if head in heads:
            return task
    if "cls_head" not in heads:
        return ""
    pattern = _PRETRAIN_LAYER if layout.startswith("ours") else _ENCODER_LAYER
    try:
        fusion = _cross_attention_start(state_dict, pattern)
    except ValueError:
        return ""
    num_fusion = layer_indices(state_dict, pattern)[-1] + 1 - fusion
    return "nlvr" if num_fusion >= 2 * fusion else "classification"


# --------------------------------------------------------------------------------------------- reference rules

def resize_bias_tables(state_dict: dict, window_size: int | None, report: ConversionReport) -> dict:
    """Drop the Swin index / mask buffers (reported); interpolate every relative-position bias table to
    (2w-1)^2 rows when ``window_size`` is given (a no-op at equal size)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith(VISION_PREFIX) and is_buffer_key(key):
            report.drop(key, SWIN_BUFFER_REASON)
            continue
        if window_size and key.startswith(VISION_PREFIX) and key.endswith(TABLE_SUFFIX):
            value = interpolate_relative_position_bias_table(value, (2 * window_size - 1) ** 2)
        out[key] = value
    return out


def strip_bert(state_dict: dict, also_roberta: bool = False) -> dict:
    """``text_encoder.bert.X`` -> ``text_encoder.X`` (the reference's bare-encoder rename); NLVR also strips
    'roberta.'."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("text_encoder."):
            if also_roberta:  # first: 'roberta.' contains 'bert.'
                key = key.replace("roberta.", "", 1)
            key = key.replace("bert.", "", 1)
        out[key] = value
    return out


def _cross_attention_start(state_dict: dict, pattern: re.Pattern) -> int:
    layers = sorted({int(m.group(1)) for k in state_dict if (m := pattern.match(k)) and
                     m.group(2).startswith("crossattention.")})
    if not layers:
        raise ValueError("no text layer has crossattention.* keys: cannot find the fusion layers of this checkpoint")
    return layers[0]


def duplicate_fusion_layers(state_dict: dict) -> dict:
    """NLVR: bare-encoder layers k < fusion stay; each fusion layer k becomes layers f+2(k-f) and f+2(k-f)+1."""
    fusion = _cross_attention_start(state_dict, _ENCODER_LAYER)
    out = {}
    for key, value in state_dict.items():
        m = _ENCODER_LAYER.match(key)
        if m is None or int(m.group(1)) < fusion:
            out[key] = value
            continue
        first = fusion + 2 * (int(m.group(1)) - fusion)
        for target in (first, first + 1):
            out[f"text_encoder.encoder.layer.{target}.{m.group(2)}"] = value
    return out


def _nlvr_layers(state_dict: dict, num_fusion_pairs: int | None) -> dict:
    """Duplicate the fusion layers of a 12-layer encoder; leave an already two-image (18-layer) encoder as it is."""
    layers = layer_indices(state_dict, _ENCODER_LAYER)
    if not layers:
        return state_dict
    fusion = _cross_attention_start(state_dict, _ENCODER_LAYER)
    num_fusion = layers[-1] + 1 - fusion
    if num_fusion_pairs is None or num_fusion == num_fusion_pairs:
        return duplicate_fusion_layers(state_dict)
    if num_fusion == 2 * num_fusion_pairs:
        return state_dict  # already the NLVR layout (a domain-pretrained or fine-tuned NLVR checkpoint)
    raise ValueError(f"NLVR conversion: the checkpoint has {num_fusion} fusion layers (from layer {fusion}); the "
                     f"model needs {num_fusion_pairs} pairs, i.e. {num_fusion_pairs} layers to duplicate or "
                     f"{2 * num_fusion_pairs} already paired")


def decoder_from_fusion_layers(state_dict: dict, num_dec_layers: int) -> dict:
    """VQA: encoder keys lose 'bert.'; the decoder gets copies of the embeddings, fusion layers (renumbered from 0)
    and the MLM head. Pre-training keys ``text_encoder.bert.*`` / ``text_encoder.cls.*`` are the input."""
    if not any(k.startswith("text_encoder.bert.") for k in state_dict):
        raise ValueError("VQA conversion needs the pre-training layout (text_encoder.bert.* keys)")
    fusion = _cross_attention_start(state_dict, _PRETRAIN_LAYER)
    layers = layer_indices(state_dict, _PRETRAIN_LAYER)
    num_fusion = layers[-1] + 1 - fusion
    if num_fusion != num_dec_layers:
        raise ValueError(f"VQA conversion: the decoder has {num_dec_layers} layers but the checkpoint has "
                         f"{num_fusion} fusion layers (layers {fusion}..{layers[-1]}); they must be equal")
    out = {}
    for key, value in state_dict.items():
        if key.startswith("text_encoder.bert."):
            out[renamed(key, _OURS_TO_BARE)] = value
            m = _PRETRAIN_LAYER.match(key)
            if m is None:
                out[renamed(key, _ENCODER_TO_DECODER)] = value
            elif int(m.group(1)) >= fusion:
                out[f"text_decoder.bert.encoder.layer.{int(m.group(1)) - fusion}.{m.group(2)}"] = value
        elif key.startswith("text_encoder.cls."):
            out[renamed(key, _ENCODER_TO_DECODER)] = value
        else:
            out[key] = value
    return out


def drop_foreign_modules(state_dict: dict, task: str, report: ConversionReport) -> dict:
    """Remove (and report) the top-level modules the task model does not have."""
    keep = TASK_MODULES[task]
    out = {}
    for key, value in state_dict.items():
        if key.split(".", 1)[0] in keep:
            out[key] = value
            continue
        reason = next((why for prefix, why in _DROP_REASONS.items() if key == prefix or key.startswith(prefix)),
                      f"module {key.split('.', 1)[0]!r} is not part of the {task} model")
        report.drop(key, reason)
    for key in [k for k in out if k.startswith("text_encoder.cls.")]:
        report.drop(key, _DROP_REASONS["text_encoder.cls."])
        del out[key]
    return out


def pretrain_to_task_reference(state_dict: dict, task: str, window_size: int | None = None,
                               num_fusion_pairs: int | None = None, num_dec_layers: int | None = None
                               ) -> tuple[dict, ConversionReport]:
    """Reference pre-training state dict -> the task's reference layout, by the reference's fine-tuning load rules.

    Bias tables are interpolated to ``window_size`` (None: left as they are) and Swin buffers dropped; the text
    keys are renamed per task (bare encoder; two-image fusion layers duplicated; VQA decoder copied from the fusion
    layers); modules the task lacks are dropped. All drops are in the report.
    """
    _check_task(task)
    report = ConversionReport()
    state = strip_prefixes(state_dict)
    state = resize_bias_tables(state, window_size, report)
    if task in ("retrieval", "classification"):
        state = strip_bert(state)
    elif task in TWO_IMAGE_TASKS:
        state = _nlvr_layers(strip_bert(state, also_roberta=True), num_fusion_pairs)
    else:
        num_dec = num_dec_layers or _num_fusion_layers(state)
        state = decoder_from_fusion_layers(state, num_dec)
    return drop_foreign_modules(state, task, report), report


def _num_fusion_layers(state_dict: dict) -> int:
    layers = layer_indices(state_dict, _PRETRAIN_LAYER)
    return layers[-1] + 1 - _cross_attention_start(state_dict, _PRETRAIN_LAYER)


# --------------------------------------------------------------------------------------------- reference task <-> ours

def task_reference_to_ours(state_dict: dict, task: str, window_size: int | None = None
                           ) -> tuple[dict, ConversionReport]:
    """Reference fine-tuning layout -> ours: Swin keys to timm (buffers dropped, tables resized only when
    ``window_size`` is given), ``text_encoder.X`` -> ``text_encoder.bert.X``, position-id buffers dropped."""
    _check_task(task)
    report = ConversionReport()
    vision, rest = split_prefix(strip_prefixes(state_dict), VISION_PREFIX)
    bad = next((k for k in rest if k.startswith("text_encoder.bert.")), None)
    if bad is not None:
        raise ValueError(f"key {bad!r}: this is the pre-training layout; use pretrain_to_task_reference first")
    for key in filter(is_buffer_key, vision):
        report.drop(VISION_PREFIX + key, SWIN_BUFFER_REASON)
    out = {}
    for key, value in rest.items():
        if key in POSITION_IDS:
            report.drop(key, POSITION_IDS_REASON)
        else:
            out[renamed(key, _BARE_TO_OURS) or key] = value
    if vision:
        out.update(add_prefix(swin_reference_to_ours(vision, window_size=window_size), VISION_PREFIX))
    if task in TWO_IMAGE_TASKS:
        _warn_if_shared_kv_differ(out)
    return out, report


def ours_to_task_reference(state_dict: dict, task: str, vision_encoder: nn.Module | None = None) -> dict:
    """Our task-model keys -> the reference fine-tuning layout; with the model's ``vision_encoder``, the buffers are
    added as the reference saves them (its Swin index/mask, the text position ids 0..P-1)."""
    _check_task(task)
    vision, rest = split_prefix(strip_prefixes(state_dict), VISION_PREFIX)
    bad = next((k for k in rest if k.startswith("text_encoder.cls.")), None)
    if bad is not None:
        raise ValueError(f"key {bad!r}: a fine-tuning text encoder has no MLM head")
    out = {renamed(key, _OURS_TO_BARE) or key: value for key, value in rest.items()}
    if vision:
        out.update(add_prefix(swin_ours_to_reference(vision, encoder=vision_encoder), VISION_PREFIX))
    if vision_encoder is not None:
        for table, ids in OUR_POSITION_TABLES.items():
            if table in rest:
                out[ids] = position_ids(rest[table])
    return out


def _warn_if_shared_kv_differ(state_dict: dict) -> None:
    """NLVR pairs share cross-attention key/value: two different tensors in a file would load as the last one."""
    pattern = re.compile(r"^text_encoder\.bert\.encoder\.layer\.(\d+)\.crossattention\.self\.(key|value)\.(.*)$")
    by_name = {}
    for key, value in state_dict.items():
        m = pattern.match(key)
        if m:
            by_name[(int(m.group(1)), m.group(2), m.group(3))] = (key, value)
    if not by_name:
        return
    fusion = min(layer for layer, _, _ in by_name)  # pairs are (f, f+1), (f+2, f+3), ... from the first fusion layer
    for (layer, proj, suffix), (key, value) in by_name.items():
        partner = by_name.get((layer + 1, proj, suffix))
        if partner is None or value.is_meta or partner[1].is_meta or (layer - fusion) % 2:
            continue
        if value.shape == partner[1].shape and not torch.equal(value, partner[1]):
            logger.warning("NLVR checkpoint: %s and %s differ but the model shares them; the second one is kept",
                           key, partner[0])


# --------------------------------------------------------------------------------------------- any layout -> ours

def convert_for_task(state_dict: dict, task: str, window_size: int | None = None, is_eval: bool = False,
                     num_fusion_pairs: int | None = None, num_dec_layers: int | None = None
                     ) -> tuple[dict, ConversionReport]:
    """Any supported checkpoint -> our task-model keys.

    - a pre-training checkpoint (the reference's, or ours, first brought to the reference layout): the reference's
      fine-tuning rules, also with ``is_eval`` (zero-shot evaluation: a raw load, as the reference's evaluation does,
      would leave the text encoder unloaded and the bias tables at the pre-training window);
    - a fine-tuned checkpoint (the reference's, or ours, first brought to the reference layout): renames only with
      ``is_eval``; otherwise bias tables are also resized to ``window_size`` (and for the two-image tasks a 12-layer
      encoder gets its fusion layers duplicated), as the reference's non-eval loader does.
    Modules the task model does not have are dropped and reported in every case.
    """
    _check_task(task)
    state = strip_prefixes(state_dict)
    layout = detect_layout(state)
    if layout.endswith("pretrain"):
        if layout == "ours_pretrain":
            state = ours_to_reference(state)
        reference, report = pretrain_to_task_reference(state, task, window_size, num_fusion_pairs, num_dec_layers)
        converted, renames = task_reference_to_ours(reference, task)
        return converted, report.merge(renames)
    if layout == "ours_finetune":
        state = ours_to_task_reference(state, task)
    if task in TWO_IMAGE_TASKS and not is_eval:
        if num_fusion_pairs is None:
            raise ValueError(f"{task} from a fine-tuning-layout checkpoint: give num_fusion_pairs, so that a 12-layer "
                             "encoder is told from an already paired one")
        state = _nlvr_layers(state, num_fusion_pairs)
    converted, report = task_reference_to_ours(state, task, window_size=None if is_eval else window_size)
    return drop_foreign_modules(converted, task, report), report


