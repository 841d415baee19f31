"""Single-image classification model (XVNLI): the fused CLS of (image, hypothesis) through an MLP head.

The hypothesis runs through all text layers; the fusion layers cross-attend to the image tokens. ``cls_head`` is
build_mlp(width, num_labels) (config ``num_labels``, 3 for XVNLI) and is the only newly initialised part.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from models.cclm import CCLMBase
from models.factory import register_model
from models.heads import build_mlp


class CCLMClassification(CCLMBase):
    """Swin + 12-layer text/fusion encoder + ``cls_head`` on the fused CLS."""

    task = "classification"

    def __init__(self, config: dict, root: str | Path | None = None):
        num_labels = config.get("num_labels", 3)
        if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 2:
            raise ValueError(f"model config: num_labels must be an integer >= 2, got {num_labels!r}")
        super().__init__(config, root)
        self.cls_head = build_mlp(self.text_width, num_labels)
        self.init_params = ["cls_head." + n for n, _ in self.cls_head.named_parameters()]

    def logits(self, image: torch.Tensor, text_ids: torch.Tensor, text_atts: torch.Tensor) -> torch.Tensor:
        """Class logits (B x num_labels)."""
        image_embeds, image_atts = self.get_vision_embeds(image)
        return self.cls_head(self.get_cross_cls(image_embeds, image_atts, text_atts=text_atts, text_ids=text_ids))

    def forward(self, image: torch.Tensor, text_ids: torch.Tensor, text_atts: torch.Tensor,
                targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """{'loss_cls': cross-entropy of the logits against ``targets``}."""
        return {"loss_cls": F.cross_entropy(self.logits(image, text_ids, text_atts), targets)}


register_model("cclm_classification", "models.classification:CCLMClassification")
