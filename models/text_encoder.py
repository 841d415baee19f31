"""Text / fusion encoder: XLM-R layers from transformers in the reference's BERT layout, plus the MLM head.

Layers [0, fusion_layer) are text-only; layers [fusion_layer, N) add a cross-attention block that attends to image
tokens (or to a second text). Module names follow the reference checkpoint (``bert.embeddings``,
``bert.encoder.layer.{k}.attention|crossattention|intermediate|output``, ``cls.predictions``), so released weights
load without renames.

Numerics that matter for parity with the reference (see the golden fixture's README):
- position ids are 0..L-1 (BERT style) and the position table has no padding index;
- self-attention masks add -10000 at padded keys, cross-attention masks add -1e9;
- the query is divided by sqrt(head_dim) before the product;
- attention is never causal, although the fusion layers are built in transformers' "decoder" mode (the only way
  transformers 5 adds cross-attention to an XLM-R layer).
"""
from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AttentionInterface, XLMRobertaConfig
from transformers.models.bert.modeling_bert import BertEmbeddings, BertOnlyMLMHead
from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaLayer

logger = logging.getLogger(__name__)

SELF_ATTENTION_MASK_VALUE = -10000.0
CROSS_ATTENTION_MASK_VALUE = -1e9
TEXT_MODES = ("text", "fusion", "multi_modal")


def _cclm_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, use_sdpa=True, **kwargs):
    """Bidirectional attention with the query divided by sqrt(d) first, as the reference computes it."""
    query = query / math.sqrt(query.shape[-1])
    if attention_mask is not None and attention_mask.dtype != query.dtype:  # under autocast
        attention_mask = attention_mask.clamp(min=torch.finfo(query.dtype).min).to(query.dtype)
    if use_sdpa:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                             is_causal=False, scale=1.0)
    else:
        scores = torch.matmul(query, key.transpose(-1, -2))
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = F.dropout(scores.softmax(dim=-1), p=dropout, training=module.training)
        out = torch.matmul(probs, value)
    return out.transpose(1, 2).contiguous(), None


def _cclm_sdpa(module, query, key, value, attention_mask, **kwargs):
    return _cclm_attention(module, query, key, value, attention_mask, use_sdpa=True, **kwargs)


def _cclm_eager(module, query, key, value, attention_mask, **kwargs):
    return _cclm_attention(module, query, key, value, attention_mask, use_sdpa=False, **kwargs)


# Our own names, so no model elsewhere in the process changes behaviour.
ATTENTION_IMPLEMENTATIONS = {"sdpa": "cclm_sdpa", "eager": "cclm_eager"}
AttentionInterface.register("cclm_sdpa", _cclm_sdpa)
AttentionInterface.register("cclm_eager", _cclm_eager)


def extended_self_attention_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0/1 (B, L) key mask -> additive (B, 1, 1, L) mask with -10000 at padded keys."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * SELF_ATTENTION_MASK_VALUE


def extended_cross_attention_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """0/1 (B, S) memory mask -> additive (B, 1, 1, S) mask with -1e9 at masked keys (None stays None)."""
    if mask is None:
        return None
    return (1.0 - mask[:, None, None, :].to(dtype)) * CROSS_ATTENTION_MASK_VALUE


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


class _LayerStack(nn.Module):
    """Holds the layers under the name ``layer`` (reference key layout ``encoder.layer.{k}``)."""

    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__()
        self.layer = nn.ModuleList(layers)


class TextBackbone(nn.Module):
    """Embeddings + text-only layers + fusion layers; ``forward`` runs one of the three modes."""

    def __init__(self, config: XLMRobertaConfig, fusion_layer: int, encoder_width: int | None = None):
        super().__init__()
        n = config.num_hidden_layers
        if not 0 <= fusion_layer <= n:
            raise ValueError(f"fusion_layer must be in [0, {n}], got {fusion_layer}")
        self.config = config
        self.fusion_layer = fusion_layer
        self.embeddings = BertEmbeddings(config)
        text_cfg = copy.deepcopy(config)
        text_cfg.is_decoder, text_cfg.add_cross_attention = False, False
        fusion_cfg = copy.deepcopy(config)
        fusion_cfg.is_decoder, fusion_cfg.add_cross_attention = True, True
        layers = [XLMRobertaLayer(fusion_cfg if k >= fusion_layer else text_cfg, layer_idx=k) for k in range(n)]
        for layer in layers[fusion_layer:]:
            _make_fusion_layer_bidirectional(layer)
            if encoder_width is not None and encoder_width != config.hidden_size:
                _resize_cross_attention_inputs(layer, encoder_width)
        self.encoder = _LayerStack(layers)

    @property
    def num_layers(self) -> int:
        return len(self.encoder.layer)

    @property
    def width(self) -> int:
        return self.config.hidden_size

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer in the backward pass (training only) to save activation memory."""
        for layer in self.encoder.layer:
            layer.gradient_checkpointing = enable
            layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                encoder_embeds: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | Sequence[torch.Tensor] | None = None,
                encoder_attention_mask: torch.Tensor | Sequence[torch.Tensor] | None = None,
                mode: str = "multi_modal") -> torch.Tensor:
        """Return the last hidden state (B x L x hidden) of the layers that ``mode`` selects.

        ``mode='text'`` embeds ``input_ids`` and runs the text-only layers; ``'fusion'`` runs the fusion layers on
        ``encoder_embeds`` (a ``'text'`` output); ``'multi_modal'`` runs all layers from ``input_ids``.
        ``encoder_hidden_states`` may be a list (one memory per image): fusion layer k then uses element
        ``(k - fusion_layer) % len(list)``, with the mask list indexed the same way.
        """
        if mode not in TEXT_MODES:
            raise ValueError(f"mode must be one of {TEXT_MODES}, got {mode!r}")
        if mode == "fusion":
            if encoder_embeds is None:
                raise ValueError("mode 'fusion' needs encoder_embeds (the output of mode 'text')")
            hidden = encoder_embeds
            start, stop = self.fusion_layer, self.num_layers
        else:
            if input_ids is None:
                raise ValueError(f"mode {mode!r} needs input_ids")
            hidden = self.embeddings(input_ids=input_ids)
            start, stop = 0, self.fusion_layer if mode == "text" else self.num_layers
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        self_mask = extended_self_attention_mask(attention_mask, hidden.dtype)
        memories, memory_masks = _as_memory_lists(encoder_hidden_states, encoder_attention_mask, hidden.dtype)
        for k in range(start, stop):
            memory = memory_mask = None
            if k >= self.fusion_layer and memories:
                j = (k - self.fusion_layer) % len(memories)
                memory, memory_mask = memories[j], memory_masks[j]
            hidden = self.encoder.layer[k](hidden, self_mask, memory, encoder_attention_mask=memory_mask)
        return hidden


def _as_memory_lists(states, masks, dtype):
    """Normalise single/list encoder states and masks into two equal-length lists of additive masks."""
    if states is None:
        return [], []
    if isinstance(states, torch.Tensor):
        states, masks = [states], [masks]
    elif masks is None:
        masks = [None] * len(states)
    if len(masks) != len(states):
        raise ValueError(f"got {len(states)} encoder_hidden_states but {len(masks)} encoder_attention_masks")
    return list(states), [extended_cross_attention_mask(m, dtype) for m in masks]


def _make_fusion_layer_bidirectional(layer: XLMRobertaLayer) -> None:
    """Decoder-mode layers flag their self-attention causal; CCLM's fusion layers are bidirectional."""
    layer.attention.self.is_causal = False
    layer.crossattention.self.is_causal = False


def _resize_cross_attention_inputs(layer: XLMRobertaLayer, encoder_width: int) -> None:
    """Cross-attention key/value read the memory, whose width may differ from the text width."""
    attn = layer.crossattention.self
    attn.key = nn.Linear(encoder_width, attn.all_head_size)
    attn.value = nn.Linear(encoder_width, attn.all_head_size)


class TextEncoder(nn.Module):
    """CCLM text/fusion encoder (``bert``) with an optional tied MLM head (``cls``)."""

    def __init__(self, config: XLMRobertaConfig, fusion_layer: int | None = None, encoder_width: int | None = None,
                 with_mlm_head: bool = True, attn_implementation: str = "sdpa"):
        super().__init__()
        if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {sorted(ATTENTION_IMPLEMENTATIONS)}, "
                             f"got {attn_implementation!r}")
        config = copy.deepcopy(config)
        config._attn_implementation = ATTENTION_IMPLEMENTATIONS[attn_implementation]
        if fusion_layer is None:
            fusion_layer = config.num_hidden_layers // 2
        self.config = config
        self.bert = TextBackbone(config, fusion_layer, encoder_width)
        self.cls = BertOnlyMLMHead(config) if with_mlm_head else None
        self.init_weights()

    @property
    def fusion_layer(self) -> int:
        return self.bert.fusion_layer

    @property
    def width(self) -> int:
        return self.config.hidden_size

    def tie_weights(self) -> None:
        """Share the MLM decoder weight with the word embeddings and its bias with the head's bias."""
        if self.cls is None:
            return
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight
        self.cls.predictions.decoder.bias = self.cls.predictions.bias

    def init_weights(self) -> None:
        """BERT initialisation: N(0, initializer_range) for Linear/Embedding, LayerNorm (1, 0), zero biases."""
        self.apply(self._init_module)
        if self.cls is not None:
            nn.init.zeros_(self.cls.predictions.bias)
        self.tie_weights()

    def _init_module(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None and not module.weight.is_meta:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer in the backward pass (training only) to save activation memory."""
        self.bert.set_grad_checkpointing(enable)

    def forward(self, input_ids=None, attention_mask=None, encoder_embeds=None, encoder_hidden_states=None,
                encoder_attention_mask=None, mode: str = "multi_modal") -> torch.Tensor:
        """Last hidden state of the selected layers (see ``TextBackbone.forward``)."""
        return self.bert(input_ids=input_ids, attention_mask=attention_mask, encoder_embeds=encoder_embeds,
                         encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
                         mode=mode)

    def mlm_logits(self, hidden_states: torch.Tensor, masked_pos: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (B x n_mask x V) at ``masked_pos`` only: hidden states are gathered before the head."""
        if self.cls is None:
            raise RuntimeError("this TextEncoder was built without an MLM head")
        index = masked_pos.unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1])
        return self.cls(torch.gather(hidden_states, 1, index))


def load_text_config(text_encoder: str | Path, num_hidden_layers: int | None = None) -> XLMRobertaConfig:
    """Read an XLM-R ``config.json`` from a directory or hub id, optionally overriding the layer count."""
    path = Path(text_encoder)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} not found: text_encoder must be a Hugging Face model directory")
        try:
            config = XLMRobertaConfig.from_dict(json.loads(config_file.read_text()))
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_file}: invalid JSON ({err})") from err
    else:
        config = XLMRobertaConfig.from_pretrained(str(text_encoder))
    if num_hidden_layers is not None:
        config.num_hidden_layers = num_hidden_layers
    return config


def read_hf_state_dict(text_encoder: str | Path) -> dict[str, torch.Tensor]:
    """Read the weights of a Hugging Face checkpoint (safetensors or pytorch_model.bin, sharded or not)."""
    from transformers.utils import cached_file

    def find(name):
        return cached_file(str(text_encoder), name, _raise_exceptions_for_missing_entries=False)

    for weights_name, index_name in (("model.safetensors", "model.safetensors.index.json"),
                                     ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        single = find(weights_name)
        if single is not None:
            return _read_weights_file(Path(single))
        index = find(index_name)
        if index is not None:
            shards = sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(_read_weights_file(Path(find(shard))))
            return state
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin (or sharded index) in {text_encoder}")


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def build_text_encoder(text_encoder: str | Path, num_hidden_layers: int = 12, fusion_layer: int | None = None,
                       encoder_width: int | None = None, load_params: bool = True, with_mlm_head: bool = True,
                       attn_implementation: str = "sdpa", bare: bool = False
                       ) -> tuple[TextEncoder | TextBackbone, list[str]]:
    """Build the text/fusion encoder from an XLM-R directory or hub id; optionally load its weights.

    Returns the module and the names (relative to it) of parameters the checkpoint did not provide
    (the cross-attention blocks): they are new and train at the larger learning rate. With ``bare`` the
    module is the ``TextBackbone`` alone (no MLM head, no ``bert.`` level), the fine-tuning models' layout.
    """
    if bare:
        model, new_params = build_text_encoder(text_encoder, num_hidden_layers, fusion_layer, encoder_width,
                                               load_params, False, attn_implementation)
        return model.bert, [name[len("bert."):] for name in new_params]
    from models.checkpoint import load_state_dict_reporting, xlmr_to_text_encoder

    config = load_text_config(text_encoder, num_hidden_layers)
    model = TextEncoder(config, fusion_layer, encoder_width, with_mlm_head, attn_implementation)
    if not load_params:
        return model, []
    source = read_hf_state_dict(text_encoder)
    converted = xlmr_to_text_encoder(source, num_hidden_layers)
    if not with_mlm_head:
        converted = {k: v for k, v in converted.items() if not k.startswith("cls.")}
    report = load_state_dict_reporting(model, converted, what=f"text encoder from {text_encoder}")
    model.tie_weights()
    parameter_names = {name for name, _ in model.named_parameters()}
    new_params = [name for name in report.missing if name in parameter_names]
    return model, new_params
