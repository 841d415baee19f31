"""Image-text retrieval model (Multi30K, MSCOCO, xFlickr&CO, WIT): ITC + ITM with hard negatives.

Training treats every caption of the same image as a positive (``idx`` = the image's id): in the contrastive targets
and when drawing ITM hard negatives. For the two-stage evaluator the model exposes the pieces separately: image and
text embeddings with their normalised features (stage 1, cosine similarities), and ``itm_score`` over many
(image, text) pairs in one fusion forward (stage 2, the raw logit of the "match" class).
The temperature is not clamped in fine-tuning (it comes from the checkpoint), as in the reference.
"""
from __future__ import annotations

from pathlib import Path

import torch

from models.cclm import CCLMBase
from models.factory import register_model
from models.losses import HardNegatives


class CCLMRetrieval(CCLMBase):
    """Swin + 12-layer text/fusion encoder, ``vision_proj`` / ``text_proj`` / ``temp`` and ``itm_head``."""

    task = "retrieval"

    def __init__(self, config: dict, root: str | Path | None = None):
        super().__init__(config, root)
        self.build_alignment_heads()
        self.init_params = []  # everything comes from the pre-trained checkpoint (the reference's list is empty)

    # ------------------------------------------------------------------ evaluation pieces
    def image_embeds_and_feat(self, image: torch.Tensor):
        """(image_embeds B x (1+L) x D, image_atts all ones, normalised image_feat B x embed_dim)."""
        image_embeds, image_atts = self.get_vision_embeds(image)
        return image_embeds, image_atts, self.get_image_feat(image_embeds)

    def text_embeds_and_feat(self, text_ids: torch.Tensor, text_atts: torch.Tensor):
        """(text-layer states B x T x D, normalised text_feat B x embed_dim)."""
        text_embeds = self.get_text_embeds(text_ids, text_atts)
        return text_embeds, self.get_text_feat(text_embeds)

    def itm_score(self, image_embeds: torch.Tensor, image_atts: torch.Tensor, text_embeds: torch.Tensor,
                  text_atts: torch.Tensor) -> torch.Tensor:
        """Raw "match" logit (ITM class 1) of each (image row, text row) pair, N pairs in one fusion forward."""
        if image_embeds.shape[0] != text_embeds.shape[0]:
            raise ValueError(f"itm_score: {image_embeds.shape[0]} image rows but {text_embeds.shape[0]} text rows; "
                             "repeat the image (or the text) so that row i is one pair")
        return self.itm_head(self.get_cross_cls(image_embeds, image_atts, text_embeds, text_atts))[:, 1]

    # ------------------------------------------------------------------ training
    def forward(self, image: torch.Tensor, text_ids: torch.Tensor, text_atts: torch.Tensor, idx: torch.Tensor,
                hard_negatives: HardNegatives | None = None) -> dict[str, torch.Tensor]:
        """{'loss_itc', 'loss_itm'} of a batch of (image, caption, image id); ``hard_negatives`` replaces the
        ITM sampling (captions of the same image are never drawn as negatives)."""
        if idx.shape[0] != image.shape[0]:
            raise ValueError(f"idx has {idx.shape[0]} entries for {image.shape[0]} images")
        image_embeds, image_atts, image_feat = self.image_embeds_and_feat(image)
        text_embeds, text_feat = self.text_embeds_and_feat(text_ids, text_atts)
        idx = idx.to(image_feat.device).view(-1)
        return {
            "loss_itc": self.get_contrastive_loss(image_feat, text_feat, idx=idx),
            "loss_itm": self.get_matching_loss(image_embeds, image_atts, image_feat, text_embeds, text_atts,
                                               text_feat, idx=idx, hard_negatives=hard_negatives),
        }


register_model("cclm_retrieval", "models.retrieval:CCLMRetrieval")
