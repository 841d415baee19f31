"""CCLM models: a shared base (encoders, features, fusion, contrastive/matching losses) and the pre-training model.

Config keys (the reference's names): ``vision_config`` (json path, bundled name or dict), ``image_res``,
``text_encoder`` (Hugging Face directory or hub id), ``text_num_hidden_layers`` (12), ``embed_dim`` (256),
``temp`` (0.07); ours: ``itc_gather`` ('local' = the reference's gradient, or 'full'), ``load_text_params`` /
``load_vision_params`` (initialise from XLM-R / Swin files; default False, e.g. when a CCLM checkpoint follows),
``drop_path_rate`` (0.1), ``attn_implementation`` ('sdpa' or 'eager'). Relative paths resolve against ``root``.

A pre-training step runs each encoder once: one vision pass, one text-layer pass (captions, masked captions and a
second text together) and one fusion pass for every pair the losses need (the ITM positives and negatives, the MLM
rows, the box queries), in which each image's cross-attention keys/values are projected once and the last layer
computes only the positions that are read. The losses are those of the reference's separate passes.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from models.heads import (build_bbox_head, build_itm_head, build_projection, build_temperature, clamp_temperature_,
                          predict_box, project_and_normalize)
from models.losses import (ITC_GATHER_MODES, HardNegatives, bbox_losses, check_hard_negatives, contrastive_loss,
                           matching_loss, mlm_loss, sample_hard_negatives)
from models.text_encoder import build_text_encoder
from models.vision import build_vision_encoder, load_vision_config
from models.weights.loading import LoadReport, load_checkpoint

logger = logging.getLogger(__name__)


def resolve_path(value: str | Path, root: str | Path | None) -> str:
    """``value`` relative to ``root`` when that file or folder exists there; otherwise ``value`` unchanged
    (an absolute path, a bundled name or a hub id)."""
    if root is not None and not Path(value).is_absolute() and (Path(root) / value).exists():
        return str(Path(root) / value)
    return str(value)


def _require(config: dict, key: str):
    if key not in config:
        raise KeyError(f"model config: missing key {key!r}")
    return config[key]


# Switches of the reference's configs that select code paths this implementation does not have. Their reference
# default is accepted; any other value is an error naming the key, never silently ignored.
UNSUPPORTED_SWITCHES = {
    "use_tlm": (False, "the reference's alternative TLM objective for parallel text (unused by its released "
                       "configs) is not implemented; the default path (ttc + ttm + mlm) is"),
    "use_one_cl_proj_only": (False, "one projection for both modalities (unused by the released configs) is not "
                                    "implemented"),
    "use_clip_vit": (False, "only the Swin vision encoder is implemented (the released models use Swin-B)"),
    "use_swin": (True, "only the Swin vision encoder is implemented (the released models use Swin-B)"),
    "mask_whole_word": (False, "whole-word masking is not implemented (nor was it in the reference)"),
}


def check_switches(config: dict) -> None:
    """Reject a reference config switch set to a code path we do not implement (see UNSUPPORTED_SWITCHES)."""
    for key, (supported, why) in UNSUPPORTED_SWITCHES.items():
        if key in config and config[key] is not None and bool(config[key]) != supported:
            raise ValueError(f"model config: {key}={config[key]!r} is not supported: {why}; set {key}: "
                             f"{str(supported).lower()}")


class CCLMBase(nn.Module):
    """Encoders and the operations every CCLM model shares.

    ``__init__`` builds the two encoders (``vision_encoder``, ``text_encoder``); subclasses set ``task`` (the
    checkpoint layout family: 'pretrain' or a fine-tuning task of ``models.weights.finetune.TASKS``) and add their
    heads (``build_alignment_heads`` for the contrastive and matching ones). Names of parameters that start from
    random init (and train at ``lr_mult`` x lr) accumulate in ``self.init_params``. Embeds are B x L x width
    sequences with token 0 the CLS; masks are 0/1 B x L.
    """

    task: str

    def __init__(self, config: dict, root: str | Path | None = None, *, with_mlm_head: bool = False,
                 num_hidden_layers: int | None = None, fusion_layer: int | None = None):
        super().__init__()
        check_switches(config)
        self.config = dict(config)
        self.root = root
        self.init_params: list[str] = []
        self.itc_gather = self.config.get("itc_gather", "local")
        if self.itc_gather not in ITC_GATHER_MODES:
            raise ValueError(f"model config: itc_gather must be one of {ITC_GATHER_MODES}, got {self.itc_gather!r}")
        self.build_vision()
        self.build_text(with_mlm_head=with_mlm_head, num_hidden_layers=num_hidden_layers, fusion_layer=fusion_layer)

    # ------------------------------------------------------------------ building
    def build_vision(self, load_params: bool | None = None) -> None:
        """Create ``self.vision_encoder`` (Swin) from ``vision_config``; optionally load its ``ckpt``."""
        spec = _require(self.config, "vision_config")
        if isinstance(spec, (str, Path)):
            spec = resolve_path(spec, self.root)
        vision_config = load_vision_config(spec)
        image_res = self.config.get("image_res")
        if image_res is not None and image_res != vision_config["image_res"]:
            raise ValueError(f"model config: image_res {image_res} differs from the vision config's "
                             f"{vision_config['image_res']} ({spec if isinstance(spec, str) else 'dict'})")
        if load_params is None:
            load_params = bool(self.config.get("load_vision_params", False))
        ckpt = vision_config.get("ckpt")
        ckpt = resolve_path(ckpt, self.root) if (load_params and ckpt) else None
        self.vision_encoder, _ = build_vision_encoder(vision_config, load_params=load_params,
                                                      drop_path_rate=self.config.get("drop_path_rate", 0.1),
                                                      ckpt_path=ckpt)
        self.vision_width = self.vision_encoder.width

    def build_text(self, load_params: bool | None = None, with_mlm_head: bool = True,
                   num_hidden_layers: int | None = None, fusion_layer: int | None = None, bare: bool = False) -> None:
        """Create ``self.text_encoder`` from ``text_encoder``; new (cross-attention) parameters join init_params.

        ``bare=True`` gives the fine-tuning layout (``text_encoder.embeddings``, ``text_encoder.encoder.layer``:
        no ``bert.`` level, no MLM head); both layouts share the forward signature and ``mode``s."""
        if load_params is None:
            load_params = bool(self.config.get("load_text_params", False))
        num_layers = num_hidden_layers or self.config.get("text_num_hidden_layers", 12)
        encoder_width = getattr(self, "vision_width", None)
        self.text_encoder, new_params = build_text_encoder(
            resolve_path(_require(self.config, "text_encoder"), self.root), num_hidden_layers=num_layers,
            fusion_layer=fusion_layer, encoder_width=encoder_width, load_params=load_params,
            with_mlm_head=with_mlm_head, attn_implementation=self.config.get("attn_implementation", "sdpa"),
            bare=bare)
        if not load_params:  # nothing loaded: the cross-attention blocks are what XLM-R would not provide
            new_params = [n for n, _ in self.text_encoder.named_parameters() if ".crossattention." in n]
        self.text_width = self.text_encoder.width
        self.init_params += ["text_encoder." + n for n in new_params]

    def build_alignment_heads(self) -> None:
        """Create the heads that align images and texts: the contrastive projections ``text_proj`` and
        ``vision_proj``, the temperature ``temp`` and the matching head ``itm_head``."""
        embed_dim = self.config.get("embed_dim", 256)
        self.text_proj = build_projection(self.text_width, embed_dim)
        self.vision_proj = build_projection(self.vision_width, embed_dim)
        self.temp = build_temperature(self.config.get("temp", 0.07))
        self.itm_head = build_itm_head(self.text_width)
        self._add_init_params("text_proj", "vision_proj", "temp", "itm_head")

    def load_pretrained(self, checkpoint: str | Path | dict, is_eval: bool = False,
                        strict: bool = False) -> LoadReport:
        """Load a checkpoint file or state dict of any layout we read (see ``models.weights.loading``); every
        missing, unexpected, dropped and newly initialised key is logged and returned."""
        return load_checkpoint(self, checkpoint, is_eval=is_eval, strict=strict)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing in every encoder the model has (the engine's ``run.grad_checkpointing``)."""
        for name in ("vision_encoder", "text_encoder", "text_decoder"):
            encoder = getattr(self, name, None)
            if encoder is not None:
                encoder.set_grad_checkpointing(enable)

    def _add_init_params(self, *module_names: str) -> None:
        for name, _ in self.named_parameters():
            if name.split(".", 1)[0] in module_names:
                self.init_params.append(name)

    # ------------------------------------------------------------------ encoders
    def get_vision_embeds(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image embeds B x (1+L) x width, all-ones mask B x (1+L))."""
        embeds = self.vision_encoder(image)
        return embeds, torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)

    def get_text_embeds(self, text_ids: torch.Tensor, text_atts: torch.Tensor) -> torch.Tensor:
        """Unimodal text states: the output of the text-only layers."""
        return self.text_encoder(text_ids, text_atts, mode="text")

    def get_cross_embeds(self, image_embeds, image_atts, text_ids=None, text_embeds=None, text_atts=None,
                         memory_index=None, output_positions=None):
        """Fused text states attending to ``image_embeds`` (a tensor or a list, one per image).

        From ``text_embeds`` (a ``'text'`` output) only the fusion layers run; from ``text_ids`` all layers run.
        With ``memory_index`` (one entry per text row) text row r attends to memory row ``memory_index[r]``, and
        each memory row is projected once however many texts attend to it. With ``output_positions`` (B x P) only
        those positions' states are returned (B x P x width) and the last layer computes only them.
        """
        if (text_ids is None) == (text_embeds is None):
            raise ValueError("get_cross_embeds: give exactly one of text_ids and text_embeds")
        if text_embeds is not None:
            return self.text_encoder(attention_mask=text_atts, encoder_embeds=text_embeds,
                                     encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts,
                                     mode="fusion", memory_index=memory_index, output_positions=output_positions)
        return self.text_encoder(text_ids, text_atts, encoder_hidden_states=image_embeds,
                                 encoder_attention_mask=image_atts, mode="multi_modal", memory_index=memory_index,
                                 output_positions=output_positions)

    def get_cross_cls(self, image_embeds, image_atts, text_embeds=None, text_atts=None, memory_index=None, *,
                      text_ids=None) -> torch.Tensor:
        """Fused CLS states (B x width), what the ITM and task heads read, from text-mode states (``text_embeds``:
        the fusion layers) or token ids (``text_ids``: every layer); the last layer computes only the CLS."""
        text = text_embeds if text_embeds is not None else text_ids
        if text is None:
            raise ValueError("get_cross_cls: give text_embeds or text_ids")
        return self.get_cross_embeds(image_embeds, image_atts, text_ids=text_ids, text_embeds=text_embeds,
                                     text_atts=text_atts, memory_index=memory_index,
                                     output_positions=_cls_positions(text))[:, 0]

    def fusion_memory(self, image_embeds: torch.Tensor, image_atts: torch.Tensor | None = None):
        """The cross-attention keys/values of ``image_embeds`` for every fusion layer, projected once: a
        ``CrossMemory`` that ``get_cross_embeds`` / ``get_cross_cls`` take in place of the image embeds (with
        ``image_atts`` None) for any number of texts."""
        return self.text_encoder.project_memory(image_embeds, image_atts)

    def get_text_embeds_together(self, texts: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """Text-mode states of several (ids, mask) batches in one encoder pass (padded to a common length)."""
        if len(texts) == 1:
            return [self.get_text_embeds(*texts[0])]
        length = max(ids.shape[1] for ids, _ in texts)
        ids = torch.cat([_pad_columns(i, length, 1) for i, _ in texts])  # pad id; masked out anyway
        atts = torch.cat([_pad_columns(a, length, 0) for _, a in texts])
        states = self.get_text_embeds(ids, atts).split([i.shape[0] for i, _ in texts])
        return [s[:, :i.shape[1]] for s, (i, _) in zip(states, texts)]

    def fuse_groups(self, memories: list[tuple[torch.Tensor, torch.Tensor]], groups: list[tuple]) -> list[torch.Tensor]:
        """One fusion pass for several groups of pairs; returns each group's fused states at its positions.

        ``memories`` is a list of (embeds M_i x S_i x width, mask M_i x S_i); a group is (text states N x L x width,
        text mask N x L, memory number i, row of memory i for each text row, positions N x P whose fused states are
        wanted). Memories, texts and position lists are padded to common sizes (padding positions receive zero
        attention weight), so every pair is fused as if alone; the result of a group is N x P x width.
        """
        memory, memory_atts, offsets = _stack_padded(memories)
        length = max(states.shape[1] for states, *_ in groups)
        num_positions = max(positions.shape[1] for *_, positions in groups)
        states = torch.cat([_pad_columns(s, length, 0) for s, *_ in groups])
        atts = torch.cat([_pad_columns(a, length, 0) for _, a, *_ in groups])
        index = torch.cat([rows.to(memory.device) + offsets[i] for _, _, i, rows, _ in groups])
        positions = torch.cat([_pad_columns(p.to(states.device), num_positions, 0) for *_, p in groups])
        fused = self.get_cross_embeds(memory, memory_atts, text_embeds=states, text_atts=atts, memory_index=index,
                                      output_positions=positions)
        return [f[:, :g[-1].shape[1]] for f, g in zip(fused.split([s.shape[0] for s, *_ in groups]), groups)]

    def draw_hard_negatives(self, x_feat, y_feat, idx=None, hard_negatives: HardNegatives | None = None
                            ) -> HardNegatives:
        """The injected negatives (checked) or one drawn per example from the local similarities."""
        if hard_negatives is None:
            return sample_hard_negatives(x_feat, y_feat, self.temp, idx)  # in range by construction
        return check_hard_negatives(HardNegatives(*(t.to(x_feat.device) for t in hard_negatives)), x_feat.shape[0])

    def get_image_feat(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Normalised contrastive feature of the image CLS."""
        return project_and_normalize(self.vision_proj, image_embeds)

    def get_text_feat(self, text_embeds: torch.Tensor) -> torch.Tensor:
        """Normalised contrastive feature of the text CLS."""
        return project_and_normalize(self.text_proj, text_embeds)

    def get_features(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor):
        """(image_feat, text_feat): normalised projections of both CLS tokens."""
        return self.get_image_feat(image_embeds), self.get_text_feat(text_embeds)

    # ------------------------------------------------------------------ losses
    def get_contrastive_loss(self, a_feat, b_feat, idx=None) -> torch.Tensor:
        """ITC/TTC over all processes with this model's temperature and gather mode."""
        return contrastive_loss(a_feat, b_feat, self.temp, idx=idx, gather=self.itc_gather)

    def get_matching_loss(self, x_embeds, x_atts, x_feat, y_embeds, y_atts, y_feat, idx=None,
                          hard_negatives: HardNegatives | None = None) -> torch.Tensor:
        """ITM/TTM with one hard negative per direction; X is the cross-attention memory, Y the query text.

        Negatives are drawn from the local similarities unless ``hard_negatives`` gives the indices. The 3B pairs
        (positives, (negative X, Y), (X, negative Y)) go through the fusion layers in one pass.
        """
        negatives = self.draw_hard_negatives(x_feat, y_feat, idx, hard_negatives)
        x_rows, y_rows = matching_pairs(negatives)
        cls = self.get_cross_cls(x_embeds, x_atts, *_rows_of(y_rows, y_embeds, y_atts), memory_index=x_rows)
        return self.matching_loss_from_cls(cls)

    def matching_loss_from_cls(self, fused_cls: torch.Tensor) -> torch.Tensor:
        """ITM cross-entropy from the fused CLS states of the 3B pairs of ``matching_pairs`` (in that order)."""
        logits = self.itm_head(fused_cls)
        bs = fused_cls.shape[0] // 3
        return matching_loss(logits[:bs], logits[bs:])


def matching_pairs(negatives: HardNegatives) -> tuple[torch.Tensor, torch.Tensor]:
    """(X rows, Y rows) of the 3B matching pairs in the reference's order: the B positives (b, b), then B
    (negative X of Y_b, b), then B (b, negative Y of X_b)."""
    rows = torch.arange(negatives.x_for_y.shape[0], device=negatives.x_for_y.device)
    return torch.cat([rows, negatives.x_for_y, rows]), torch.cat([rows, rows, negatives.y_for_x])


def _rows_of(rows: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """``tensor[rows]`` for each tensor, by index_select: ``rows`` repeats indices, and the backward of advanced
    indexing (index_put_ with accumulate) adds repeated rows with atomics on multi-threaded CPUs, in a varying order,
    which made training (and an exact resume) non-deterministic; index_select's backward adds them in order."""
    return [t.index_select(0, rows.to(t.device)) for t in tensors]


def _cls_positions(rows: torch.Tensor) -> torch.Tensor:
    """Position 0 for each of ``rows`` (N x 1): the CLS, all that the ITM and box heads read."""
    return torch.zeros((rows.shape[0], 1), dtype=torch.long, device=rows.device)


def _pad_columns(tensor: torch.Tensor, length: int, value) -> torch.Tensor:
    """Right-pad dimension 1 of ``tensor`` to ``length`` with ``value``."""
    missing = length - tensor.shape[1]
    if missing == 0:
        return tensor
    pad = (0, 0) * (tensor.dim() - 2) + (0, missing)
    return torch.nn.functional.pad(tensor, pad, value=value)


def _stack_padded(memories: list[tuple[torch.Tensor, torch.Tensor]]):
    """(memory rows of every source, masks, row offset of each source), padded to the longest sequence."""
    if len(memories) == 1:
        return memories[0][0], memories[0][1], [0]
    length = max(embeds.shape[1] for embeds, _ in memories)
    embeds = torch.cat([_pad_columns(e, length, 0.0) for e, _ in memories])
    atts = torch.cat([_pad_columns(a.to(embeds.dtype), length, 0.0) for _, a in memories])
    sizes = [e.shape[0] for e, _ in memories]
    return embeds, atts, [sum(sizes[:i]) for i in range(len(sizes))]


class CCLMPretrain(CCLMBase):
    """The CCLM pre-training model: ITC/ITM/MLM on image-text, TTC/TTM/MLM on parallel text, + box losses on
    regions. ``forward`` takes the reference's keyword arguments and returns a dict of named losses."""

    task = "pretrain"

    def __init__(self, config: dict, root: str | Path | None = None):
        super().__init__(config, root, with_mlm_head=True)
        self.build_alignment_heads()
        self.bbox_head = build_bbox_head(self.text_width)
        self._add_init_params("bbox_head")

    def forward(self, image=None, text_ids=None, text_atts=None, text_ids_masked=None, masked_pos=None,
                masked_ids=None, text_ids_2=None, text_atts_2=None, text_ids_masked_2=None, masked_pos_2=None,
                masked_ids_2=None, image_atts=None, idx_to_group_img=None, target_bbox=None, is_image=None,
                ret_bbox_loss=False, text_atts_masked=None, hard_negatives=None) -> dict[str, torch.Tensor]:
        """Losses of one batch: image + caption(s) when ``image`` is given (regions with ``idx_to_group_img``),
        parallel text otherwise. ``hard_negatives`` (HardNegatives) replaces the ITM/TTM sampling.

        The masked second-language fields are accepted and unused, as in the reference.
        """
        if text_atts_masked is not None:
            raise NotImplementedError("text_atts_masked is the reference's TLM path (use_tlm), which is not supported")
        clamp_temperature_(self.temp)
        if image is None:
            return self.forward_para_text(text_ids, text_atts, text_ids_masked, masked_pos, masked_ids,
                                          text_ids_2, text_atts_2, hard_negatives)
        return self.forward_multimodal(image, text_ids, text_atts, text_ids_masked, masked_pos, masked_ids,
                                       text_ids_2, text_atts_2, image_atts, idx_to_group_img, target_bbox,
                                       is_image, ret_bbox_loss, hard_negatives)

    def forward_multimodal(self, image, text_ids, text_atts, text_ids_masked, masked_pos, masked_ids,
                           text_ids_2=None, text_atts_2=None, image_atts=None, idx_to_group_img=None,
                           target_bbox=None, is_image=None, ret_bbox_loss=False, hard_negatives=None):
        """Image-text (or region-text) batch: itc, itm, mlm (+ ttc with a 2nd caption, + bbox/giou for regions).

        One vision pass, one text-layer pass (captions and masked captions together) and one fusion pass (matching
        pairs, masked captions and box queries together), each image's keys/values projected once per layer.
        """
        if ret_bbox_loss and (idx_to_group_img is None or target_bbox is None):
            raise ValueError("ret_bbox_loss needs idx_to_group_img, image_atts and target_bbox (a region batch)")
        if idx_to_group_img is None:
            image_embeds, image_atts = self.get_vision_embeds(image)
            full_images = None
        else:
            if image_atts is None:
                raise ValueError("a region batch (idx_to_group_img given) needs image_atts")
            image_embeds, full_images = self.vision_encoder.forward_regions(image, idx_to_group_img, image_atts)
        texts = [(text_ids, text_atts), (text_ids_masked, text_atts)]
        if text_ids_2 is not None:
            texts.append((text_ids_2, text_atts_2))
        text_embeds, masked_embeds, *second = self.get_text_embeds_together(texts)
        image_feat, text_feat = self.get_features(image_embeds, text_embeds)
        losses = {"loss_itc": self.get_contrastive_loss(image_feat, text_feat)}
        if second:  # a second caption switches on the extra ITC term and TTC
            text_feat_2 = self.get_text_feat(second[0])
            losses["loss_itc"] = (losses["loss_itc"] + self.get_contrastive_loss(image_feat, text_feat_2)) / 2
            losses["loss_ttc"] = self.get_contrastive_loss(text_feat, text_feat_2)
        negatives = self.draw_hard_negatives(image_feat, text_feat, hard_negatives=hard_negatives)
        x_rows, y_rows = matching_pairs(negatives)
        rows = torch.arange(text_ids.shape[0], device=text_embeds.device)
        memories = [(image_embeds, image_atts)]
        groups = [(*_rows_of(y_rows, text_embeds, text_atts), 0, x_rows, _cls_positions(y_rows)),
                  (masked_embeds, text_atts, 0, rows, masked_pos)]
        if ret_bbox_loss:  # box queries attend to their whole image (all-ones mask)
            memories.append((full_images, torch.ones(full_images.shape[:2], dtype=image_atts.dtype,
                                                     device=full_images.device)))
            groups.append((text_embeds, text_atts, 1, idx_to_group_img, _cls_positions(rows)))
        fused = self.fuse_groups(memories, groups)
        losses["loss_itm"] = self.matching_loss_from_cls(fused[0][:, 0])
        losses["loss_mlm"] = mlm_loss(self.text_encoder.token_logits(fused[1]), masked_ids)
        if ret_bbox_loss:
            boxes = predict_box(self.bbox_head, fused[2][:, 0])
            # calc_image_bbox_loss: whole-image captions count in the box losses too (their target is the image)
            counted = None if self.config.get("calc_image_bbox_loss") else is_image
            losses["loss_bbox"], losses["loss_giou"] = bbox_losses(boxes, target_bbox, counted)
        return losses

    def forward_para_text(self, text_ids, text_atts, text_ids_masked, masked_pos, masked_ids, text_ids_2,
                          text_atts_2, hard_negatives=None):
        """Parallel-text batch: ttc; ttm with text 1 as the memory (image role) and text 2 as the query; mlm on
        masked text 1 attending to text 2. One text-layer pass and one fusion pass, as for images."""
        if text_ids_2 is None or text_atts_2 is None:
            raise ValueError("a parallel-text batch (image=None) needs text_ids_2 and text_atts_2")
        text_embeds, text_embeds_2, masked_embeds = self.get_text_embeds_together(
            [(text_ids, text_atts), (text_ids_2, text_atts_2), (text_ids_masked, text_atts)])
        text_feat, text_feat_2 = self.get_text_feat(text_embeds), self.get_text_feat(text_embeds_2)
        negatives = self.draw_hard_negatives(text_feat, text_feat_2, hard_negatives=hard_negatives)
        x_rows, y_rows = matching_pairs(negatives)
        rows = torch.arange(text_ids.shape[0], device=text_embeds.device)
        fused = self.fuse_groups([(text_embeds, text_atts), (text_embeds_2, text_atts_2)],
                                 [(*_rows_of(y_rows, text_embeds_2, text_atts_2), 0, x_rows, _cls_positions(y_rows)),
                                  (masked_embeds, text_atts, 1, rows, masked_pos)])
        return {
            "loss_ttc": self.get_contrastive_loss(text_feat, text_feat_2),
            "loss_ttm": self.matching_loss_from_cls(fused[0][:, 0]),
            "loss_mlm": mlm_loss(self.text_encoder.token_logits(fused[1]), masked_ids),
        }
