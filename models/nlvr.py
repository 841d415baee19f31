"""Two-image model (NLVR2 / MaRVL): a statement about a left and a right image, true or false.

The text encoder has the text-only layers of the base model followed by twice its fusion layers (6 + 2 x 6 = 18 at
full size). Fusion layers come in pairs: the first of a pair cross-attends to the left image, the second to the right
image, and the two share the cross-attention key and value projections (their query, output, self-attention and FFN
are separate). A pre-trained fusion layer initialises both members of its pair (see finetune_checkpoint).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from models.cclm import CCLMBase
from models.factory import register_model
from models.finetune_checkpoint import TaskLoadReport, load_task_checkpoint
from models.heads import build_mlp


def nlvr_layer_counts(text_num_hidden_layers: int) -> tuple[int, int]:
    """(total layers, fusion_layer) of the two-image encoder built from a base encoder of that many layers."""
    fusion_layer = text_num_hidden_layers // 2
    return fusion_layer + 2 * (text_num_hidden_layers - fusion_layer), fusion_layer


def share_pair_cross_attention_kv(text_encoder, fusion_layer: int) -> None:
    """Make each fusion pair (f+2i, f+2i+1) use one cross-attention key and one value projection."""
    layers = text_encoder.bert.encoder.layer
    if (len(layers) - fusion_layer) % 2:
        raise ValueError(f"{len(layers) - fusion_layer} fusion layers cannot be paired")
    for first in range(fusion_layer, len(layers), 2):
        lead, follower = layers[first].crossattention.self, layers[first + 1].crossattention.self
        follower.key = lead.key
        follower.value = lead.value


class CCLMNLVR(CCLMBase):
    """Swin + text encoder with paired fusion layers + ``cls_head`` (2 classes) on the fused CLS."""

    task = "nlvr"

    def __init__(self, config: dict, root: str | Path | None = None):
        super().__init__(config, root)
        base_layers = self.config.get("text_num_hidden_layers", 12)
        num_layers, fusion_layer = nlvr_layer_counts(base_layers)
        self.num_fusion_pairs = base_layers - fusion_layer
        self.build_vision()
        self.build_text(with_mlm_head=False, num_hidden_layers=num_layers, fusion_layer=fusion_layer)
        share_pair_cross_attention_kv(self.text_encoder, fusion_layer)
        self.cls_head = build_mlp(self.text_width, 2)
        self.init_params = ["cls_head." + n for n, _ in self.cls_head.named_parameters()]

    def load_pretrained(self, checkpoint: str | Path | dict, is_eval: bool = False,
                        strict: bool = False) -> TaskLoadReport:
        """Load a CCLM pre-training checkpoint (fusion layers duplicated), an NLVR domain-pretrained or a fine-tuned
        NLVR checkpoint (layers as they are); every key change is reported."""
        return load_task_checkpoint(self, checkpoint, self.task, is_eval=is_eval, strict=strict,
                                    num_fusion_pairs=self.num_fusion_pairs)

    def logits(self, left_image: torch.Tensor, right_image: torch.Tensor, text_ids: torch.Tensor,
               text_atts: torch.Tensor) -> torch.Tensor:
        """Logits (B x 2; class 1 = true): both images in one vision pass, the statement fused with both."""
        if left_image.shape != right_image.shape:
            raise ValueError(f"left and right images differ in shape: {tuple(left_image.shape)} vs "
                             f"{tuple(right_image.shape)}")
        image_embeds, image_atts = self.get_vision_embeds(torch.cat([left_image, right_image]))
        bs = left_image.shape[0]
        memories = [image_embeds[:bs], image_embeds[bs:]]
        masks = [image_atts[:bs], image_atts[bs:]]
        fused = self.get_cross_embeds(memories, masks, text_ids=text_ids, text_atts=text_atts)
        return self.cls_head(fused[:, 0])

    def forward(self, left_image: torch.Tensor, right_image: torch.Tensor, text_ids: torch.Tensor,
                text_atts: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """{'loss_cls': cross-entropy of the logits against ``targets`` (1 = true)}."""
        return {"loss_cls": F.cross_entropy(self.logits(left_image, right_image, text_ids, text_atts), targets)}


register_model("cclm_nlvr", "models.nlvr:CCLMNLVR")
