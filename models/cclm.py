"""CCLM models: a shared base (encoders, features, fusion, contrastive/matching losses) and the pre-training model.

Config keys (the reference's names): ``vision_config`` (json path, bundled name or dict), ``image_res``,
``text_encoder`` (Hugging Face directory or hub id), ``text_num_hidden_layers`` (12), ``embed_dim`` (256),
``temp`` (0.07); ours: ``itc_gather`` ('local' = the reference's gradient, or 'full'), ``load_text_params`` /
``load_vision_params`` (initialise from XLM-R / Swin files; default False, e.g. when a CCLM checkpoint follows),
``drop_path_rate`` (0.1), ``attn_implementation`` ('sdpa' or 'eager'). Relative paths resolve against ``root``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import LoadReport, load_reference_checkpoint, load_state_dict_reporting, reference_to_ours
from models.heads import (build_bbox_head, build_itm_head, build_projection, build_temperature, clamp_temperature_,
                          predict_box, project_and_normalize)
from models.losses import (ITC_GATHER_MODES, HardNegatives, bbox_losses, check_hard_negatives, contrastive_loss,
                           matching_loss, mlm_loss, sample_hard_negatives)
from models.text_encoder import build_text_encoder
from models.vision import build_vision_encoder, load_vision_config

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


class CCLMBase(nn.Module):
    """Encoders and the operations every CCLM model shares.

    Subclasses call ``build_vision``, ``build_text`` and ``build_contrastive_heads`` in ``__init__``; names of
    parameters that start from random init (and train at ``lr_mult`` x lr) accumulate in ``self.init_params``.
    Embeds are B x L x width sequences with token 0 the CLS; masks are 0/1 B x L.
    """

    def __init__(self, config: dict, root: str | Path | None = None):
        super().__init__()
        self.config = dict(config)
        self.root = root
        self.init_params: list[str] = []
        self.itc_gather = self.config.get("itc_gather", "local")
        if self.itc_gather not in ITC_GATHER_MODES:
            raise ValueError(f"model config: itc_gather must be one of {ITC_GATHER_MODES}, got {self.itc_gather!r}")

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

    def build_contrastive_heads(self) -> None:
        """Create ``text_proj``, ``vision_proj`` and the temperature ``temp``."""
        embed_dim = self.config.get("embed_dim", 256)
        self.text_proj = build_projection(self.text_width, embed_dim)
        self.vision_proj = build_projection(self.vision_width, embed_dim)
        self.temp = build_temperature(self.config.get("temp", 0.07))
        self._add_init_params("text_proj", "vision_proj", "temp")

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

    def get_region_embeds(self, image: torch.Tensor, image_atts: torch.Tensor, idx_to_group_img: torch.Tensor):
        """Region mode, one row per text: (region embeds, region mask ``image_atts``, full-image embeds).

        The region sequence has the mask-weighted mean of the region's patches as its first token."""
        region, full = self.vision_encoder(image, idx_to_group_img=idx_to_group_img, image_atts=image_atts)
        return region, image_atts, full

    def get_text_embeds(self, text_ids: torch.Tensor, text_atts: torch.Tensor) -> torch.Tensor:
        """Unimodal text states: the output of the text-only layers."""
        return self.text_encoder(text_ids, text_atts, mode="text")

    def get_cross_embeds(self, image_embeds, image_atts, text_ids=None, text_embeds=None, text_atts=None):
        """Fused text states attending to ``image_embeds`` (a tensor or a list, one per image).

        From ``text_embeds`` (a ``'text'`` output) only the fusion layers run; from ``text_ids`` all layers run.
        """
        if (text_ids is None) == (text_embeds is None):
            raise ValueError("get_cross_embeds: give exactly one of text_ids and text_embeds")
        if text_embeds is not None:
            return self.text_encoder(attention_mask=text_atts, encoder_embeds=text_embeds,
                                     encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts,
                                     mode="fusion")
        return self.text_encoder(text_ids, text_atts, encoder_hidden_states=image_embeds,
                                 encoder_attention_mask=image_atts, mode="multi_modal")

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

        Negatives are drawn from the local similarities unless ``hard_negatives`` gives the indices.
        """
        bs = x_embeds.shape[0]
        if hard_negatives is None:
            hard_negatives = sample_hard_negatives(x_feat, y_feat, self.temp, idx)
        negatives = check_hard_negatives(HardNegatives(*(t.to(x_embeds.device) for t in hard_negatives)), bs)
        x_neg, x_atts_neg = x_embeds[negatives.x_for_y], x_atts[negatives.x_for_y]
        y_neg, y_atts_neg = y_embeds[negatives.y_for_x], y_atts[negatives.y_for_x]
        cross_pos = self.get_cross_embeds(x_embeds, x_atts, text_embeds=y_embeds, text_atts=y_atts)[:, 0]
        cross_neg = self.get_cross_embeds(torch.cat([x_neg, x_embeds]), torch.cat([x_atts_neg, x_atts]),
                                          text_embeds=torch.cat([y_embeds, y_neg]),
                                          text_atts=torch.cat([y_atts, y_atts_neg]))[:, 0]
        logits = self.itm_head(torch.cat([cross_pos, cross_neg]))
        return matching_loss(logits[:bs], logits[bs:])


class CCLMPretrain(CCLMBase):
    """The CCLM pre-training model: ITC/ITM/MLM on image-text, TTC/TTM/MLM on parallel text, + box losses on
    regions. ``forward`` takes the reference's keyword arguments and returns a dict of named losses."""

    def __init__(self, config: dict, root: str | Path | None = None):
        super().__init__(config, root)
        self.build_vision()
        self.build_text(with_mlm_head=True)
        self.build_contrastive_heads()
        self.itm_head = build_itm_head(self.text_width)
        self.bbox_head = build_bbox_head(self.text_width)
        self._add_init_params("itm_head", "bbox_head")

    def load_pretrained(self, checkpoint: str | Path | dict, strict: bool = False) -> LoadReport:
        """Load a reference-layout (or our) pre-training checkpoint, reporting missing/unexpected keys."""
        state = load_reference_checkpoint(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
        state = reference_to_ours(state, window_size=self.vision_encoder.window_size)
        what = str(checkpoint) if not isinstance(checkpoint, dict) else "state dict"
        return load_state_dict_reporting(self, state, what=what, strict=strict)

    def get_mlm_loss(self, text_ids_masked, text_atts, memory, memory_atts, masked_pos, masked_ids):
        """MLM over all layers, the fusion layers attending to ``memory`` (image or the other text)."""
        hidden = self.text_encoder(text_ids_masked, text_atts, encoder_hidden_states=memory,
                                   encoder_attention_mask=memory_atts, mode="multi_modal")
        return mlm_loss(self.text_encoder.mlm_logits(hidden, masked_pos), masked_ids)

    def predict_bbox(self, image_embeds, text_embeds, text_atts) -> torch.Tensor:
        """(cx, cy, w, h) in [0, 1] from the text fused with the whole image (all-ones mask)."""
        ones = torch.ones(image_embeds.shape[:2], dtype=image_embeds.dtype, device=image_embeds.device)
        fused = self.get_cross_embeds(image_embeds, ones, text_embeds=text_embeds, text_atts=text_atts)
        return predict_box(self.bbox_head, fused[:, 0])

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
        """Image-text (or region-text) batch: itc, itm, mlm (+ ttc with a 2nd caption, + bbox/giou for regions)."""
        if ret_bbox_loss and (idx_to_group_img is None or target_bbox is None):
            raise ValueError("ret_bbox_loss needs idx_to_group_img, image_atts and target_bbox (a region batch)")
        if idx_to_group_img is None:
            image_embeds, image_atts = self.get_vision_embeds(image)
            full_embeds = image_embeds
        else:
            if image_atts is None:
                raise ValueError("a region batch (idx_to_group_img given) needs image_atts")
            image_embeds, image_atts, full_embeds = self.get_region_embeds(image, image_atts, idx_to_group_img)
        text_embeds = self.get_text_embeds(text_ids, text_atts)
        image_feat, text_feat = self.get_features(image_embeds, text_embeds)
        losses = {"loss_itc": self.get_contrastive_loss(image_feat, text_feat)}
        if text_ids_2 is not None:  # a second caption switches on the extra ITC term and TTC
            text_feat_2 = self.get_text_feat(self.get_text_embeds(text_ids_2, text_atts_2))
            losses["loss_itc"] = (losses["loss_itc"] + self.get_contrastive_loss(image_feat, text_feat_2)) / 2
            losses["loss_ttc"] = self.get_contrastive_loss(text_feat, text_feat_2)
        losses["loss_itm"] = self.get_matching_loss(image_embeds, image_atts, image_feat, text_embeds, text_atts,
                                                    text_feat, hard_negatives=hard_negatives)
        losses["loss_mlm"] = self.get_mlm_loss(text_ids_masked, text_atts, image_embeds, image_atts, masked_pos,
                                               masked_ids)
        if ret_bbox_loss:
            boxes = self.predict_bbox(full_embeds, text_embeds, text_atts)
            losses["loss_bbox"], losses["loss_giou"] = bbox_losses(boxes, target_bbox, is_image)
        return losses

    def forward_para_text(self, text_ids, text_atts, text_ids_masked, masked_pos, masked_ids, text_ids_2,
                          text_atts_2, hard_negatives=None):
        """Parallel-text batch: ttc; ttm with text 1 as the memory (image role) and text 2 as the query; mlm on
        masked text 1 attending to text 2."""
        if text_ids_2 is None or text_atts_2 is None:
            raise ValueError("a parallel-text batch (image=None) needs text_ids_2 and text_atts_2")
        text_embeds = self.get_text_embeds(text_ids, text_atts)
        text_embeds_2 = self.get_text_embeds(text_ids_2, text_atts_2)
        text_feat, text_feat_2 = self.get_text_feat(text_embeds), self.get_text_feat(text_embeds_2)
        return {
            "loss_ttc": self.get_contrastive_loss(text_feat, text_feat_2),
            "loss_ttm": self.get_matching_loss(text_embeds, text_atts, text_feat, text_embeds_2, text_atts_2,
                                               text_feat_2, hard_negatives=hard_negatives),
            "loss_mlm": self.get_mlm_loss(text_ids_masked, text_atts, text_embeds_2, text_atts_2, masked_pos,
                                          masked_ids),
        }
