"""Text / fusion encoder: XLM-R layers from transformers in the reference's BERT layout, plus the MLM head.

Layers [0, fusion_layer) are text-only; layers [fusion_layer, N) add a cross-attention block that attends to image
tokens (or to a second text). Module names follow the reference checkpoint (``bert.embeddings``,
``bert.encoder.layer.{k}.attention|crossattention|intermediate|output``, ``cls.predictions``), so released weights
load without renames.

Numerics that matter for parity with the reference (docs/model.md#parity-numerics):
- position ids are 0..L-1 (BERT style) and the position table has no padding index;
- self-attention masks add -10000 at padded keys, cross-attention masks add -1e9;
- the query is divided by sqrt(head_dim) before the product;
- attention is never causal, although the fusion layers are built in transformers' "decoder" mode (the only way
  transformers 5 adds cross-attention to an XLM-R layer).

Work that cannot change a result is skipped (bench/RESULTS.md has the figures): trailing columns that are padding in
every row; in training, every padding position (the layers run on the real tokens, attention on the padded layout);
repeated projections of a shared cross-attention memory (``memory_index``); in
the last layer, the positions nobody reads (``output_positions``). On CPU, dropout draws its mask from random bits
and training attention avoids SDPA's unfused fallback.
"""
from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AttentionInterface, XLMRobertaConfig
from transformers.models.bert.modeling_bert import BertEmbeddings, BertOnlyMLMHead
from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaCrossAttention, XLMRobertaLayer

from models.fast_ops import FastDropout, fast_dropout, host_checkable, softmax_last_dim
from models.weights.loading import load_state_dict_reporting
from models.weights.xlmr import xlmr_text_encoder_weights

logger = logging.getLogger(__name__)

SELF_ATTENTION_MASK_VALUE = -10000.0
CROSS_ATTENTION_MASK_VALUE = -1e9
TEXT_MODES = ("text", "fusion", "multi_modal")
# Packed training layers run on the real tokens plus a few padding positions, up to a multiple of this: the real
# token count changes with every draw of hard negatives, and every new matrix shape made oneDNN build and cache new
# kernels and the allocator keep blocks of new sizes (resident memory grew by ~360 MiB over the first 100 steps of
# the tiny model; bench/training_memory.py). The padding positions are computed like any token and masked as keys.
PACKED_TOKENS_MULTIPLE = 64


class _KeyValues(NamedTuple):
    """One fusion layer's cross-attention keys and values of a memory: rows x heads x S x head_dim each."""

    keys: torch.Tensor
    values: torch.Tensor


class CrossMemory(NamedTuple):
    """A cross-attention memory whose keys and values are already projected for every fusion layer
    (:meth:`TextBackbone.project_memory`), so fusion passes over the same memory rows (e.g. many batches of texts
    paired with the same images) do not project them again. Pass it as ``encoder_hidden_states``."""

    layers: tuple[_KeyValues, ...]  # one per fusion layer
    mask: torch.Tensor | None       # 0/1 rows x S (None: every position is attended)

    @property
    def rows(self) -> int:
        return self.layers[0].keys.shape[0] if self.layers else 0


def _use_fast_dropout(module: nn.Module) -> None:
    """Swap every ``nn.Dropout`` inside ``module`` for :class:`FastDropout` (same rate; dropout has no state)."""
    for parent in module.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p))


# On CPU 'sdpa' runs the plain path, faster at text lengths (bench/RESULTS.md): SDPA's CPU kernel with a mask took up
# to 1.9x longer for 40 x 40-50 attention, and with dropout it falls back to unfused maths plus fully-masked-row checks.
SDPA_ON_CPU = False


def _cclm_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, use_sdpa=True,
                    cclm_memory_index=None, **kwargs):
    """Bidirectional attention with the query divided by sqrt(d) first, as the reference computes it.

    In a cross-attention block, ``cclm_memory_index`` (N,) maps each of the N query rows to a row of the memory's
    keys/values, so that a memory shared by several rows is projected once (see ``TextBackbone.forward``).
    """
    shared_memory = cclm_memory_index is not None and isinstance(module, XLMRobertaCrossAttention)
    query = query / math.sqrt(query.shape[-1])
    if attention_mask is not None and attention_mask.dtype != query.dtype:  # under autocast
        attention_mask = attention_mask.clamp(min=torch.finfo(query.dtype).min).to(query.dtype)
    if shared_memory and query.device.type == "cpu" and not torch.is_grad_enabled():
        probs_dropout = partial(fast_dropout, p=dropout, training=module.training)
        return _attention_by_memory_row(query, key, value, attention_mask, cclm_memory_index, probs_dropout), None
    if shared_memory:
        key, value = key.index_select(0, cclm_memory_index), value.index_select(0, cclm_memory_index)
    if use_sdpa and (SDPA_ON_CPU or query.device.type != "cpu"):
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                             is_causal=False, scale=1.0)
    else:
        scores = torch.matmul(query, key.transpose(-1, -2))
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = fast_dropout(softmax_last_dim(scores), dropout, module.training)
        out = torch.matmul(probs, value)
    return out.transpose(1, 2).contiguous(), None


def _attention_by_memory_row(query, key, value, mask, memory_index, probs_dropout) -> torch.Tensor:
    """Attention of N query rows (N x heads x L x d, already scaled) to the keys/values of memory row
    ``memory_index[r]`` (M x heads x S x d; ``mask`` N x 1 x 1 x S), without a copy of each row's keys/values
    (on CPU, gathering them cost more than the attention itself): the rows of one memory row attend together, their
    positions stacked (heads x rows*L x d). Returns N x L x heads x d."""
    rows, heads, length, dim = query.shape
    ordered = bool((memory_index[1:] >= memory_index[:-1]).all())
    order = None if ordered else memory_index.argsort(stable=True)
    if order is not None:
        query, memory_index = query.index_select(0, order), memory_index.index_select(0, order)
        mask = None if mask is None else mask.index_select(0, order)
    out = query.new_empty((rows, length, heads, dim))
    memory_rows, counts = torch.unique_consecutive(memory_index, return_counts=True)
    start = 0
    for m, count in zip(memory_rows.tolist(), counts.tolist()):
        stop = start + count
        q = query[start:stop].transpose(0, 1).reshape(heads, count * length, dim)
        scores = torch.matmul(q, key[m].transpose(-1, -2))
        if mask is not None:
            scores = scores + mask[start, 0]
        probs = probs_dropout(softmax_last_dim(scores))
        out[start:stop] = torch.matmul(probs, value[m]).view(heads, count, length, dim).permute(1, 2, 0, 3)
        start = stop
    if order is not None:
        out = torch.empty_like(out).index_copy_(0, order, out)
    return out


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
        _use_fast_dropout(self)

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

    def project_memory(self, states: torch.Tensor, mask: torch.Tensor | None = None) -> CrossMemory:
        """The cross-attention keys and values of ``states`` (M x S x width, 0/1 ``mask`` M x S) for every fusion
        layer, computed once (see :class:`CrossMemory`)."""
        layers = tuple(_memory_keys_values(layer.crossattention.self, states)
                       for layer in self.encoder.layer[self.fusion_layer:])
        return CrossMemory(layers, mask)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                encoder_embeds: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | Sequence[torch.Tensor] | None = None,
                encoder_attention_mask: torch.Tensor | Sequence[torch.Tensor] | None = None,
                mode: str = "multi_modal", memory_index: torch.Tensor | None = None,
                output_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Return the last hidden state (B x L x hidden) of the layers that ``mode`` selects.

        ``mode='text'`` embeds ``input_ids`` and runs the text-only layers; ``'fusion'`` runs the fusion layers on
        ``encoder_embeds`` (a ``'text'`` output); ``'multi_modal'`` runs all layers from ``input_ids``.
        ``encoder_hidden_states`` may be a list (one memory per image): fusion layer k then uses element
        ``(k - fusion_layer) % len(list)``, with the mask list indexed the same way.
        ``memory_index`` (B,) says which row of a single memory tensor (M x S x width, mask M x S) each text row
        attends to: the memory's keys/values are then projected once per memory row, not once per text row.
        ``encoder_hidden_states`` may also be a :class:`CrossMemory` (keys/values projected beforehand; its mask
        replaces ``encoder_attention_mask``).

        ``output_positions`` (B x P) asks for the states at those positions only (e.g. [[0]] for the CLS): the last
        layer then computes just them (its keys and values still cover every position) and the result is B x P x
        hidden.

        Trailing positions that are padding in every row are not computed (their keys get weight exp(-10000) = 0
        anyway); the output is zero there. Other positions are unchanged.
        """
        if mode not in TEXT_MODES:
            raise ValueError(f"mode must be one of {TEXT_MODES}, got {mode!r}")
        if mode == "fusion":
            if encoder_embeds is None:
                raise ValueError("mode 'fusion' needs encoder_embeds (the output of mode 'text')")
            full_length = encoder_embeds.shape[1]
            start, stop = self.fusion_layer, self.num_layers
        else:
            if input_ids is None:
                raise ValueError(f"mode {mode!r} needs input_ids")
            full_length = input_ids.shape[1]
            start, stop = 0, self.fusion_layer if mode == "text" else self.num_layers
        length = _used_length(attention_mask, full_length)
        if attention_mask is not None:
            attention_mask = attention_mask[:, :length]
        if mode == "fusion":
            hidden = encoder_embeds[:, :length]
        else:
            hidden = self.embeddings(input_ids=input_ids[:, :length])
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        self_mask = extended_self_attention_mask(attention_mask, hidden.dtype)
        layer_kwargs = {}
        if start < stop and stop > self.fusion_layer:
            if isinstance(encoder_hidden_states, CrossMemory):
                _check_cross_memory(encoder_hidden_states, self.num_layers - self.fusion_layer,
                                    encoder_attention_mask)
                encoder_attention_mask = encoder_hidden_states.mask
            memories, memory_masks, memory_index = _prepare_memory(encoder_hidden_states, encoder_attention_mask,
                                                                   memory_index, hidden.shape[0], hidden.dtype)
            if memory_index is not None:
                layer_kwargs["cclm_memory_index"] = memory_index
        else:
            memories, memory_masks = [], []
        if output_positions is not None:
            output_positions = _check_positions(output_positions, hidden.shape[0], length, full_length)
        packing = _Packing.of(attention_mask) if self._packs(attention_mask, stop - start) else None
        if packing is not None:
            hidden = packing.pack(hidden)
        for k in range(start, stop):
            memory = memory_mask = None
            if k >= self.fusion_layer and memories:
                j = (k - self.fusion_layer) % len(memories)
                memory, memory_mask = memories[j], memory_masks[j]
            layer = self.encoder.layer[k]
            if output_positions is not None and k == stop - 1:
                if packing is not None:
                    hidden = packing.unpack(hidden)
                return _layer_at_positions(layer, hidden, output_positions, self_mask, memory, memory_mask,
                                           **layer_kwargs)
            if packing is not None:
                hidden = _packed_layer(layer, hidden, packing, self_mask, memory, memory_mask, **layer_kwargs)
            elif isinstance(memory, _KeyValues):
                hidden = _layer_with_keys_values(layer, hidden, self_mask, memory, memory_mask, **layer_kwargs)
            else:
                hidden = layer(hidden, self_mask, memory, encoder_attention_mask=memory_mask, **layer_kwargs)
        if packing is not None:
            hidden = packing.unpack(hidden)
        if output_positions is not None:  # no layer ran
            return _states_at(hidden, output_positions)
        if length < full_length:
            hidden = F.pad(hidden, (0, 0, 0, full_length - length))
        return hidden

    def _packs(self, attention_mask: torch.Tensor, num_layers: int) -> bool:
        """Run the layers on the real tokens only? In training, when at least 10% of the positions are padding.

        (In eval the padded positions keep the values the reference computes there, which the golden fixture
        records; in training nothing reads them.)"""
        if not (self.training and num_layers > 0 and torch.is_grad_enabled()) \
                or torch.compiler.is_compiling() or attention_mask.is_meta:
            return False
        return bool(attention_mask.ne(0).float().mean() < 0.9)


class _Packing(NamedTuple):
    """Where the real (non-padding) tokens of a rows x length batch are: ``index`` into the flattened positions."""

    index: torch.Tensor
    rows: int
    length: int

    @classmethod
    def of(cls, attention_mask: torch.Tensor) -> "_Packing":
        """The real tokens, then the first padding positions up to a multiple of ``PACKED_TOKENS_MULTIPLE``."""
        real = attention_mask.reshape(-1).ne(0)
        index = real.nonzero().squeeze(1)
        extra = min(-index.numel() % PACKED_TOKENS_MULTIPLE, real.numel() - index.numel())
        if extra:
            index = torch.cat([index, real.logical_not().nonzero().squeeze(1)[:extra]])
        return cls(index, *attention_mask.shape)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """rows x length x ... -> tokens x ..."""
        return x.reshape(self.rows * self.length, *x.shape[2:]).index_select(0, self.index)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """tokens x ... -> rows x length x ..., zeros at the padding positions that were not packed."""
        padded = x.new_zeros((self.rows * self.length, *x.shape[1:]))
        return padded.index_copy(0, self.index, x).view(self.rows, self.length, *x.shape[1:])


def _packed_layer(layer: XLMRobertaLayer, hidden, packing: _Packing, self_mask, memory, memory_mask, **kwargs):
    """``layer`` on packed real tokens (tokens x D): the token-wise parts (projections, LayerNorms, feed-forward,
    dropout) run on the real tokens only; attention runs on the padded layout, as before."""
    if layer.gradient_checkpointing and torch.is_grad_enabled():
        return checkpoint(partial(_packed_layer_forward, layer, packing=packing, self_mask=self_mask, memory=memory,
                                  memory_mask=memory_mask, **kwargs), hidden, use_reentrant=False)
    return _packed_layer_forward(layer, hidden, packing, self_mask, memory, memory_mask, **kwargs)


def _packed_layer_forward(layer, hidden, packing, self_mask, memory, memory_mask, **kwargs):
    attn = layer.attention.self
    qkv = packing.unpack(torch.cat([attn.query(hidden), attn.key(hidden), attn.value(hidden)], dim=-1))
    q, k, v = (t.view(packing.rows, packing.length, attn.num_attention_heads, -1).transpose(1, 2)
               for t in qkv.chunk(3, dim=-1))
    out = _attention_of(attn, q, k, v, self_mask)
    states = layer.attention.output(packing.pack(out.reshape(packing.rows, packing.length, -1)), hidden)
    if memory is not None:
        cross = layer.crossattention.self
        heads = cross.num_attention_heads
        q = packing.unpack(cross.query(states)).view(packing.rows, packing.length, heads, -1).transpose(1, 2)
        k, v = _memory_keys_values(cross, memory)
        out = _attention_of(cross, q, k, v, memory_mask, **kwargs)
        states = layer.crossattention.output(packing.pack(out.reshape(packing.rows, packing.length, -1)), states)
    return layer.feed_forward_chunk(states)


def _attention_of(module, q, k, v, mask, **kwargs) -> torch.Tensor:
    """Our attention function as ``module`` would call it (its kernel choice and dropout rate)."""
    out, _ = _cclm_attention(module, q, k, v, mask, dropout=module.dropout.p if module.training else 0.0,
                             use_sdpa=module.config._attn_implementation == ATTENTION_IMPLEMENTATIONS["sdpa"],
                             **kwargs)
    return out


def _memory_keys_values(cross: XLMRobertaCrossAttention, memory: torch.Tensor | _KeyValues) -> _KeyValues:
    """Keys and values of a memory (rows x S x width) for the cross-attention ``cross``; projected ones pass."""
    if isinstance(memory, _KeyValues):
        return memory
    shape = (*memory.shape[:2], cross.num_attention_heads, cross.attention_head_size)
    return _KeyValues(cross.key(memory).view(shape).transpose(1, 2), cross.value(memory).view(shape).transpose(1, 2))


def _cross_attention_block(layer: XLMRobertaLayer, states, memory, memory_mask, **kwargs) -> torch.Tensor:
    """``layer.crossattention`` (attention, output projection, residual LayerNorm) on ``states`` (rows x L x D),
    the memory a tensor or its projected keys/values."""
    if not isinstance(memory, _KeyValues):
        return layer.crossattention(states, None, memory, memory_mask, **kwargs)[0]
    cross = layer.crossattention.self
    rows = states.shape[0]
    q = cross.query(states).view(rows, -1, cross.num_attention_heads, cross.attention_head_size).transpose(1, 2)
    out = _attention_of(cross, q, memory.keys, memory.values, memory_mask, **kwargs)
    return layer.crossattention.output(out.reshape(rows, states.shape[1], -1), states)


def _layer_with_keys_values(layer: XLMRobertaLayer, hidden, self_mask, memory: _KeyValues, memory_mask, **kwargs):
    """A fusion layer whose memory's keys/values are already projected (what ``layer(...)`` computes)."""
    if layer.gradient_checkpointing and torch.is_grad_enabled():
        return checkpoint(partial(_layer_with_keys_values_forward, layer, self_mask=self_mask, memory=memory,
                                  memory_mask=memory_mask, **kwargs), hidden, use_reentrant=False)
    return _layer_with_keys_values_forward(layer, hidden, self_mask, memory, memory_mask, **kwargs)


def _layer_with_keys_values_forward(layer, hidden, self_mask, memory, memory_mask, **kwargs):
    states, _ = layer.attention(hidden, self_mask)
    return layer.feed_forward_chunk(_cross_attention_block(layer, states, memory, memory_mask, **kwargs))


def _states_at(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``hidden`` (B x L x D) at ``positions`` (B x P): B x P x D."""
    return torch.gather(hidden, 1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


def _check_positions(positions: torch.Tensor, rows: int, length: int, full_length: int) -> torch.Tensor:
    if positions.dim() != 2 or positions.shape[0] != rows:
        raise ValueError(f"output_positions must be {rows} x P, got {tuple(positions.shape)}")
    if host_checkable(positions) and (int(positions.min()) < 0 or int(positions.max()) >= full_length):
        raise ValueError(f"output_positions must lie in [0, {full_length})")
    # A position beyond the used length is padding everywhere: its state is not defined by the text, use the last.
    return positions.to(torch.long).clamp(max=length - 1)


def _layer_at_positions(layer: XLMRobertaLayer, hidden, positions, self_mask, memory, memory_mask, **kwargs):
    """``layer(hidden)`` at ``positions`` only (B x P): queries there, keys/values of every position; B x P x D."""
    rows = hidden.shape[0]
    queries = _states_at(hidden, positions)
    attn = layer.attention.self
    heads, head_dim = attn.num_attention_heads, attn.attention_head_size
    q = attn.query(queries).view(rows, -1, heads, head_dim).transpose(1, 2)
    k = attn.key(hidden).view(rows, -1, heads, head_dim).transpose(1, 2)
    v = attn.value(hidden).view(rows, -1, heads, head_dim).transpose(1, 2)
    out = _attention_of(attn, q, k, v, self_mask)
    states = layer.attention.output(out.reshape(rows, queries.shape[1], -1), queries)
    if memory is not None:
        states = _cross_attention_block(layer, states, memory, memory_mask, **kwargs)
    return layer.feed_forward_chunk(states)


def _used_length(attention_mask: torch.Tensor | None, full_length: int) -> int:
    """1 + the last position that is not padding in some row (at least 1); ``full_length`` without a mask."""
    # Under torch.compile a data-dependent length would recompile the graph for every length: keep the full one.
    if attention_mask is None or attention_mask.is_meta or full_length == 0 or torch.compiler.is_compiling():
        return full_length
    used = attention_mask.ne(0).any(dim=0).nonzero()
    return max(1, int(used[-1]) + 1) if used.numel() else 1


def _prepare_memory(states, masks, memory_index, num_rows: int, dtype):
    """(memories, additive masks, memory index) for the fusion layers.

    With ``memory_index`` the memory is kept compact and the masks are expanded to one row per text.
    """
    if memory_index is not None:
        if not isinstance(states, (torch.Tensor, CrossMemory)):
            raise ValueError("memory_index needs encoder_hidden_states as a single tensor (M x S x width) or a "
                             "CrossMemory")
        rows = states.rows if isinstance(states, CrossMemory) else states.shape[0]
        device = states.layers[0].keys.device if isinstance(states, CrossMemory) else states.device
        memory_index = memory_index.to(device=device, dtype=torch.long).reshape(-1)
        if memory_index.shape[0] != num_rows:
            raise ValueError(f"memory_index has {memory_index.shape[0]} entries for {num_rows} text rows")
        if host_checkable(memory_index) and (int(memory_index.min()) < 0 or int(memory_index.max()) >= rows):
            raise ValueError(f"memory_index values must lie in [0, {rows}) (the memory's rows)")
    memories, memory_masks = _as_memory_lists(states, masks, dtype)
    if memory_index is not None:
        memory_masks = [None if m is None else m.index_select(0, memory_index) for m in memory_masks]
    return memories, memory_masks, memory_index


def _check_cross_memory(memory: CrossMemory, fusion_layers: int, mask) -> None:
    if len(memory.layers) != fusion_layers:
        raise ValueError(f"the CrossMemory holds keys/values of {len(memory.layers)} fusion layers, this encoder has "
                         f"{fusion_layers}")
    if mask is not None:
        raise ValueError("a CrossMemory carries its own mask: pass encoder_attention_mask=None")


def _as_memory_lists(states, masks, dtype):
    """Normalise single/list encoder states and masks into two equal-length lists of additive masks."""
    if states is None:
        return [], []
    if isinstance(states, CrossMemory):  # one entry per fusion layer, all with the memory's mask
        return list(states.layers), [extended_cross_attention_mask(masks, dtype)] * len(states.layers)
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

    def project_memory(self, states: torch.Tensor, mask: torch.Tensor | None = None) -> CrossMemory:
        """See :meth:`TextBackbone.project_memory`."""
        return self.bert.project_memory(states, mask)

    def forward(self, input_ids=None, attention_mask=None, encoder_embeds=None, encoder_hidden_states=None,
                encoder_attention_mask=None, mode: str = "multi_modal", memory_index=None,
                output_positions=None) -> torch.Tensor:
        """Last hidden state of the selected layers (see ``TextBackbone.forward``)."""
        return self.bert(input_ids=input_ids, attention_mask=attention_mask, encoder_embeds=encoder_embeds,
                         encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
                         mode=mode, memory_index=memory_index, output_positions=output_positions)

    def mlm_logits(self, hidden_states: torch.Tensor, masked_pos: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (B x n_mask x V) at ``masked_pos`` only: hidden states are gathered before the head."""
        return self.token_logits(_states_at(hidden_states, masked_pos))

    def token_logits(self, states: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of already selected states (... x hidden -> ... x V)."""
        if self.cls is None:
            raise RuntimeError("this TextEncoder was built without an MLM head")
        return self.cls(states)


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
    config = load_text_config(text_encoder, num_hidden_layers)
    model = TextEncoder(config, fusion_layer, encoder_width, with_mlm_head, attn_implementation)
    if not load_params:
        return model, []
    converted = xlmr_text_encoder_weights(text_encoder, num_hidden_layers)
    if not with_mlm_head:
        converted = {k: v for k, v in converted.items() if not k.startswith("cls.")}
    report = load_state_dict_reporting(model, converted, what=f"text encoder from {text_encoder}")
    model.tie_weights()
    parameter_names = {name for name, _ in model.named_parameters()}
    new_params = [name for name in report.missing if name in parameter_names]
    return model, new_params
