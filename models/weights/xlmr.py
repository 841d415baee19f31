"""Hugging Face XLM-R weights -> the CCLM text encoder: reading a model folder, the reference's layer selection and
the renames (``roberta.`` -> ``bert.``, ``lm_head.`` -> ``cls.predictions.``)."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from models.weights.errors import CheckpointMismatchError, WeightsFileError
from models.weights.files import read_state_dict
from models.weights.keys import layer_indices, layer_key_pattern, renamed, strip_prefixes

logger = logging.getLogger(__name__)

# Hugging Face XLM-R buffers and the pooler have no counterpart in the CCLM text encoder.
XLMR_DROPPED = re.compile(r"^(roberta\.)?(embeddings\.(position_ids|token_type_ids)|pooler\.)")
# XLM-R's LM head -> the reference's (BERT-named) MLM head
XLMR_LM_HEAD_RENAMES = (("lm_head.dense.", "cls.predictions.transform.dense."),
                        ("lm_head.layer_norm.", "cls.predictions.transform.LayerNorm."),
                        ("lm_head.decoder.", "cls.predictions.decoder."),
                        ("lm_head.bias", "cls.predictions.bias"))
# The encoder of an XLMRobertaForMaskedLM (under 'roberta.') or of a bare XLMRobertaModel -> 'bert.'
_MASKED_LM_ENCODER = (("roberta.", "bert."),)
_BARE_ENCODER = (("embeddings.", "bert.embeddings."), ("encoder.", "bert.encoder."))
_LAYER_KEY = layer_key_pattern("bert.")


def layer_selection(num_source_layers: int, num_target_layers: int) -> dict[int, int]:
    """Map source layer index -> target index as the reference does: all layers if equal, else the odd ones.

    With twice as many source layers (XLM-R-large's 24 for 12), layers 1, 3, ..., 2N-1 become 0..N-1.
    """
    if num_source_layers == num_target_layers:
        return {i: i for i in range(num_target_layers)}
    if num_source_layers == 2 * num_target_layers:
        return {2 * i + 1: i for i in range(num_target_layers)}
    raise ValueError(f"cannot select {num_target_layers} text layers from a checkpoint with {num_source_layers}: "
                     "the reference supports only an equal count or exactly half (odd layers)")


def xlmr_to_text_encoder(state_dict: dict, num_target_layers: int) -> dict[str, torch.Tensor]:
    """Hugging Face XLM-R (``XLMRobertaForMaskedLM`` or bare model) keys -> ``TextEncoder`` keys.

    ``roberta.`` becomes ``bert.``, the layers are selected as the reference selects them (odd layers when the
    source has twice as many), ``lm_head.*`` becomes ``cls.predictions.*``; the pooler and the position/token-type
    id buffers are dropped.
    """
    state_dict = strip_prefixes(state_dict)
    has_prefix = any(k.startswith("roberta.") for k in state_dict)
    renames = XLMR_LM_HEAD_RENAMES + (_MASKED_LM_ENCODER if has_prefix else _BARE_ENCODER)
    converted = {}
    for key, value in state_dict.items():
        if XLMR_DROPPED.match(key):
            logger.info("XLM-R conversion: dropping %s (no counterpart in the CCLM text encoder)", key)
            continue
        converted[renamed(key, renames) or key] = value  # an unknown key is left for the loader to report
    source_layers = layer_indices(converted, _LAYER_KEY)
    if not source_layers:
        raise ValueError("XLM-R conversion: no 'roberta.encoder.layer.N.' keys found; is this an XLM-R checkpoint?")
    num_source = source_layers[-1] + 1
    mapping = layer_selection(num_source, num_target_layers)
    out = {}
    for key, value in converted.items():
        m = _LAYER_KEY.match(key)
        if m is None:
            out[key] = value
        elif int(m.group(1)) in mapping:
            out[f"bert.encoder.layer.{mapping[int(m.group(1))]}.{m.group(2)}"] = value
    return out


def xlmr_text_encoder_weights(text_encoder: str | Path, num_target_layers: int) -> dict[str, torch.Tensor]:
    """The weights of a Hugging Face XLM-R folder (or hub id) as ``TextEncoder`` keys (:func:`xlmr_to_text_encoder`);
    a folder whose weights do not convert is a :class:`CheckpointMismatchError` naming it."""
    source = read_hf_state_dict(text_encoder)
    try:
        return xlmr_to_text_encoder(source, num_target_layers)
    except ValueError as err:
        raise CheckpointMismatchError(f"text_encoder {text_encoder}: {err}") from err


def read_hf_state_dict(text_encoder: str | Path) -> dict[str, torch.Tensor]:
    """Read the weights of a Hugging Face checkpoint (safetensors or pytorch_model.bin, sharded or not)."""
    from transformers.utils import cached_file

    def find(name):
        return cached_file(str(text_encoder), name, _raise_exceptions_for_missing_entries=False)

    for weights_name, index_name in (("model.safetensors", "model.safetensors.index.json"),
                                     ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        single = find(weights_name)
        if single is not None:
            return read_state_dict(single)
        index = find(index_name)
        if index is not None:
            state = {}
            for shard in _shard_names(Path(index)):
                path = find(shard)
                if path is None:
                    raise WeightsFileError(f"{index}: shard {shard!r} is listed but absent")
                state.update(read_state_dict(path))
            return state
    raise WeightsFileError(f"no model.safetensors or pytorch_model.bin (or sharded index) in {text_encoder}: "
                           "text_encoder must name a Hugging Face XLM-R folder with its weights")


def _shard_names(index: Path) -> list[str]:
    """The weight files a Hugging Face shard index lists."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        return sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise WeightsFileError(f"{index}: not a Hugging Face shard index (a json object with a 'weight_map' "
                               f"object): {type(err).__name__}: {err}") from err
