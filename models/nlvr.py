"""Two-image models: NLVR2 / MaRVL (a statement about a left and a right image, true or false) and the optional
NLVR domain pre-training (which of the two images, if any, a caption describes).

The text encoder has the text-only layers of the base model followed by twice its fusion layers (6 + 2 x 6 = 18 at
full size). Fusion layers come in pairs: the first of a pair cross-attends to the left image, the second to the right
image, and the two share the cross-attention key and value projections (their query, output, self-attention and FFN
are separate). A pre-trained fusion layer initialises both members of its pair (see models.weights.finetune).

Domain pre-training (docs/model.md#nlvr-domain-pre-training) arranges image-caption batches into two-image
examples: each caption is shown with its own image and a hard-negative one (label 0: its image on the left, 1: on
the right) or with two negatives (label 2: neither); ``ta_head`` classifies the fused CLS into these three classes.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.cclm import CCLMBase
from models.factory import register_model
from models.fast_ops import host_checkable
from models.heads import build_mlp, build_projection
from models.losses import similarity_logits

# Domain pre-training: probability that a caption is shown with its own image (labels 0/1) rather than with two
# negatives (label 2).
PAIR_PROBABILITY = 2 / 3
NUM_DOMAIN_LABELS = 3
# Temperature of the image-image similarities that rank the negatives (not learnable;
# docs/model.md#nlvr-domain-pre-training).
DOMAIN_NEGATIVE_TEMP = 0.07


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


class CCLMTwoImage(CCLMBase):
    """Swin + text encoder with paired fusion layers (shared cross-attention key/value); subclasses add the head."""

    task = "nlvr"

    def __init__(self, config: dict, root: str | Path | None = None):
        base_layers = config.get("text_num_hidden_layers", 12)
        num_layers, fusion_layer = nlvr_layer_counts(base_layers)
        super().__init__(config, root, num_hidden_layers=num_layers, fusion_layer=fusion_layer)
        self.num_fusion_pairs = base_layers - fusion_layer
        share_pair_cross_attention_kv(self.text_encoder, fusion_layer)

    def fused_cls(self, left_embeds: torch.Tensor, left_atts: torch.Tensor, right_embeds: torch.Tensor,
                  right_atts: torch.Tensor, text_ids: torch.Tensor, text_atts: torch.Tensor) -> torch.Tensor:
        """Fused CLS (B x text_width) of the text through all layers, each pair's first fusion layer attending to
        the left image, the second to the right one."""
        return self.get_cross_cls([left_embeds, right_embeds], [left_atts, right_atts], text_atts=text_atts,
                                  text_ids=text_ids)


class CCLMNLVR(CCLMTwoImage):
    """Swin + text encoder with paired fusion layers + ``cls_head`` (2 classes) on the fused CLS."""

    task = "nlvr"

    def __init__(self, config: dict, root: str | Path | None = None):
        super().__init__(config, root)
        self.cls_head = build_mlp(self.text_width, 2)
        self.init_params = ["cls_head." + n for n, _ in self.cls_head.named_parameters()]

    def logits(self, left_image: torch.Tensor, right_image: torch.Tensor, text_ids: torch.Tensor,
               text_atts: torch.Tensor) -> torch.Tensor:
        """Logits (B x 2; class 1 = true): both images in one vision pass, the statement fused with both."""
        if left_image.shape != right_image.shape:
            raise ValueError(f"left and right images differ in shape: {tuple(left_image.shape)} vs "
                             f"{tuple(right_image.shape)}")
        image_embeds, image_atts = self.get_vision_embeds(torch.cat([left_image, right_image]))
        bs = left_image.shape[0]
        return self.cls_head(self.fused_cls(image_embeds[:bs], image_atts[:bs], image_embeds[bs:], image_atts[bs:],
                                            text_ids, text_atts))

    def forward(self, left_image: torch.Tensor, right_image: torch.Tensor, text_ids: torch.Tensor,
                text_atts: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """{'loss_cls': cross-entropy of the logits against ``targets`` (1 = true)}."""
        return {"loss_cls": F.cross_entropy(self.logits(left_image, right_image, text_ids, text_atts), targets)}


# --------------------------------------------------------------------------------------------- domain pre-training

class DomainArrangement(NamedTuple):
    """Two-image examples built from an image-caption batch: caption b is shown with images ``left[b]`` and
    ``right[b]``; ``labels[b]`` is 0 when it describes the left image, 1 the right one, 2 neither."""

    left: torch.Tensor
    right: torch.Tensor
    labels: torch.Tensor


def domain_negative_weights(sim: torch.Tensor) -> torch.Tensor:
    """The domain step's negative-sampling weights: the row softmax of the image-image logits, diagonal zeroed (the
    reference's; unlike ITM's weights no + 1e-5, which would pull the draw towards uniform: the self-similarity
    leaves the other weights near 1e-5)."""
    return F.softmax(sim, dim=1).fill_diagonal_(0)


@torch.no_grad()
def draw_domain_arrangement(image_feat: torch.Tensor, temp: float = DOMAIN_NEGATIVE_TEMP,
                            generator: torch.Generator | None = None) -> DomainArrangement:
    """Arrange a batch of captions with hard-negative images drawn from the image-image similarities.

    ``image_feat`` (B x D) are L2-normalised. Two distinct negatives per row come from one multinomial draw over
    :func:`domain_negative_weights`; then, per row, a uniform draw picks a pair (2/3) or "neither" (1/3) and a second
    one the side of the own image in a pair. Nothing is read on the host, so the draw stays on the device (and in
    one compiled graph).
    """
    bs = image_feat.shape[0]
    if bs < 3:
        raise ValueError(f"NLVR domain arrangement needs at least 3 images per batch (two distinct negatives per "
                         f"caption), got {bs}")
    device = image_feat.device
    sim = similarity_logits(image_feat, image_feat, torch.tensor(temp, dtype=torch.float32, device=device))
    negatives = torch.multinomial(domain_negative_weights(sim), 2, replacement=False, generator=generator)
    first, second = negatives[:, 0], negatives[:, 1]
    draws = torch.rand((2, bs), generator=generator, device=device)
    is_pair, own_on_right = draws[0] < PAIR_PROBABILITY, draws[1] < 0.5
    own = torch.arange(bs, device=device)
    left = torch.where(is_pair & ~own_on_right, own, first)
    right = torch.where(is_pair, torch.where(own_on_right, own, first), second)
    labels = torch.where(is_pair, own_on_right.long(), torch.full_like(own, 2))
    return DomainArrangement(left, right, labels)


def check_domain_arrangement(arrangement: DomainArrangement, batch_size: int,
                             device: torch.device) -> DomainArrangement:
    """An injected arrangement on ``device``, validated: three (B,) index vectors, images and labels in range."""
    arrangement = DomainArrangement(*(t.to(device=device, dtype=torch.long) for t in arrangement))
    for name, values, high in (("left", arrangement.left, batch_size), ("right", arrangement.right, batch_size),
                               ("labels", arrangement.labels, NUM_DOMAIN_LABELS)):
        if values.shape != (batch_size,):
            raise ValueError(f"domain arrangement {name}: expected shape ({batch_size},), got {tuple(values.shape)}")
        if host_checkable(values) and (int(values.min()) < 0 or int(values.max()) >= high):
            raise ValueError(f"domain arrangement {name}: values must lie in [0, {high}), got {values.tolist()}")
    return arrangement


class CCLMNLVRDomain(CCLMTwoImage):
    """The NLVR domain pre-training model: the two-image encoder + ``vision_proj`` + ``ta_head`` (3 classes).

    ``vision_proj`` (loaded from the CCLM pre-training checkpoint) only ranks the hard-negative images, under
    no_grad, so it is frozen (``requires_grad`` False): DDP then sees no unused trainable parameter and the
    optimiser leaves it unchanged. It is saved with the model, as in the reference layout.
    """

    task = "nlvr_domain"

    def __init__(self, config: dict, root: str | Path | None = None):
        super().__init__(config, root)
        self.vision_proj = build_projection(self.vision_width, self.config.get("embed_dim", 256))
        self.vision_proj.requires_grad_(False)
        self.ta_head = nn.Linear(self.text_width, NUM_DOMAIN_LABELS)
        self.init_params = ["ta_head.weight", "ta_head.bias"]
        self.negative_temp = float(self.config.get("negative_temp", DOMAIN_NEGATIVE_TEMP))
        if not self.negative_temp > 0:
            raise ValueError(f"model config: negative_temp must be positive, got {self.config['negative_temp']!r}")

    @torch.no_grad()
    def negative_ranking_feat(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """L2-normalised ``vision_proj`` of the image CLS, without gradient (it only ranks negatives)."""
        return F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)

    def logits(self, image: torch.Tensor, text_ids: torch.Tensor, text_atts: torch.Tensor,
               arrangement: DomainArrangement | None = None) -> tuple[torch.Tensor, DomainArrangement]:
        """(ta_head logits B x 3, the arrangement used): one vision pass; the arrangement is the given one or drawn
        (global RNG) from this batch's image similarities."""
        if image.shape[0] != text_ids.shape[0]:
            raise ValueError(f"{image.shape[0]} images for {text_ids.shape[0]} captions: a domain batch pairs each "
                             "caption with its own image")
        image_embeds, image_atts = self.get_vision_embeds(image)
        if arrangement is None:
            arrangement = draw_domain_arrangement(self.negative_ranking_feat(image_embeds), temp=self.negative_temp)
        else:
            arrangement = check_domain_arrangement(arrangement, image.shape[0], image_embeds.device)
        # index_select, not advanced indexing: rows repeat, and the backward of advanced indexing adds repeated
        # rows in a varying order on multi-threaded CPUs (see models.cclm._rows_of)
        left = [t.index_select(0, arrangement.left) for t in (image_embeds, image_atts)]
        right = [t.index_select(0, arrangement.right) for t in (image_embeds, image_atts)]
        return self.ta_head(self.fused_cls(*left, *right, text_ids, text_atts)), arrangement

    def forward(self, image: torch.Tensor, text_ids: torch.Tensor, text_atts: torch.Tensor,
                arrangement: DomainArrangement | None = None) -> dict[str, torch.Tensor]:
        """{'loss_ta': cross-entropy of ta_head on the fused CLS of the arranged two-image examples}."""
        logits, arrangement = self.logits(image, text_ids, text_atts, arrangement)
        return {"loss_ta": F.cross_entropy(logits, arrangement.labels)}


register_model("cclm_nlvr", "models.nlvr:CCLMNLVR")
register_model("cclm_nlvr_domain", "models.nlvr:CCLMNLVRDomain")
