"""Visual question answering model (xGQA): an encoder for (image, question) and a 6-layer answer decoder.

The question runs through all encoder layers, its fusion layers attending to the image. The decoder (``text_decoder``:
embeddings, ``num_dec_layers`` layers that all have causal self-attention + cross-attention to the question states,
and the MLM head as LM head) is initialised from the pre-trained fusion layers (see models.weights.finetune).

Training: teacher-forced answers ``<s> answer </s>``; each answer's loss is the SUM of its token NLLs (``</s>``
included), weighted, summed and divided by the number of questions.
Inference ranks a fixed answer list (docs/model.md#vqa-ranking): the decoder's first-step softmax over the whole
vocabulary gives each answer the probability of its first token; the k most likely answers are then scored as
log p(first token) - NLL(whole answer) (the first token counted twice, as the reference does), soft-maxed over the k,
and sorted.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from models.cclm import CCLMBase, resolve_path
from models.factory import register_model
from models.fast_ops import host_checkable
from models.text_encoder import SELF_ATTENTION_MASK_VALUE, build_text_encoder, extended_cross_attention_mask

IGNORE_INDEX = -100


def causal_self_attention_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0/1 (B, L) key mask -> additive (B, 1, L, L): query i sees the non-padded keys j <= i; -10000 elsewhere."""
    length = mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    allowed = causal[None, None] & mask[:, None, None, :].bool()
    return (1.0 - allowed.to(dtype)) * SELF_ATTENTION_MASK_VALUE


class CCLMVQA(CCLMBase):
    """Swin + 12-layer text/fusion encoder (question) + ``text_decoder`` (answers)."""

    task = "vqa"

    def __init__(self, config: dict, root: str | Path | None = None):
        super().__init__(config, root)
        self.num_dec_layers = self.config.get("num_dec_layers", 6)
        num_fusion = self.text_encoder.bert.num_layers - self.text_encoder.fusion_layer
        if self.num_dec_layers != num_fusion:
            raise ValueError(f"model config: num_dec_layers ({self.num_dec_layers}) must equal the encoder's number of "
                             f"fusion layers ({num_fusion}): the decoder is initialised from them")
        self.text_decoder, _ = build_text_encoder(
            resolve_path(self.config["text_encoder"], self.root), num_hidden_layers=self.num_dec_layers,
            fusion_layer=0, encoder_width=None, load_params=False, with_mlm_head=True,
            attn_implementation=self.config.get("attn_implementation", "sdpa"))
        self.pad_token_id = self.text_encoder.config.pad_token_id
        self.init_params = []  # the decoder too comes from the pre-trained checkpoint

    # ------------------------------------------------------------------ encoder / decoder
    def question_states(self, image: torch.Tensor, question_ids: torch.Tensor,
                        question_atts: torch.Tensor) -> torch.Tensor:
        """Final encoder states of the question tokens, fused with the image (B x T x D)."""
        image_embeds, image_atts = self.get_vision_embeds(image)
        return self.get_cross_embeds(image_embeds, image_atts, text_ids=question_ids, text_atts=question_atts)

    def decode(self, answer_ids: torch.Tensor, answer_atts: torch.Tensor | None, question_states: torch.Tensor,
               question_atts: torch.Tensor) -> torch.Tensor:
        """Decoder hidden states (N x L x D) of teacher-forced answers attending to the question states."""
        decoder = self.text_decoder.bert
        hidden = decoder.embeddings(input_ids=answer_ids)
        if answer_atts is None:
            answer_atts = torch.ones(answer_ids.shape, dtype=torch.long, device=answer_ids.device)
        self_mask = causal_self_attention_mask(answer_atts, hidden.dtype)
        cross_mask = extended_cross_attention_mask(question_atts, hidden.dtype)
        for layer in decoder.encoder.layer:
            hidden = layer(hidden, self_mask, question_states, encoder_attention_mask=cross_mask)
        return hidden

    def answer_nll(self, answer_ids: torch.Tensor, answer_atts: torch.Tensor, question_states: torch.Tensor,
                   question_atts: torch.Tensor) -> torch.Tensor:
        """Summed next-token NLL of each answer (N,): targets are the ids after ``<s>``, padding ignored."""
        hidden = self.decode(answer_ids, answer_atts, question_states, question_atts)
        targets = answer_ids.masked_fill(answer_ids == self.pad_token_id, IGNORE_INDEX)[:, 1:]
        predicting = hidden[:, :-1]
        rows, cols = torch.nonzero(targets != IGNORE_INDEX, as_tuple=True)
        # The LM head is position-wise: apply it to the scored positions only (a vocabulary row per target token).
        logits = self.text_decoder.cls(predicting[rows, cols])
        token_nll = F.cross_entropy(logits, targets[rows, cols], reduction="none")
        return torch.zeros(answer_ids.shape[0], dtype=token_nll.dtype, device=token_nll.device).index_add(
            0, rows, token_nll)

    # ------------------------------------------------------------------ training
    def forward(self, image: torch.Tensor, question_ids: torch.Tensor, question_atts: torch.Tensor,
                answer_ids: torch.Tensor, answer_atts: torch.Tensor, weights: torch.Tensor,
                answer_counts: torch.Tensor | list[int]) -> dict[str, torch.Tensor]:
        """{'loss_vqa'}: sum over answers of weight x answer NLL, divided by the number of questions.

        ``answer_counts[b]`` answers (consecutive rows of ``answer_ids``) belong to question b.
        """
        counts = torch.as_tensor(answer_counts, dtype=torch.long)  # a list stays on the host: checked for free
        if counts.shape != (question_ids.shape[0],) or (host_checkable(counts)
                                                        and int(counts.sum()) != answer_ids.shape[0]):
            raise ValueError(f"answer_counts {counts.tolist()} must give one count per question "
                             f"({question_ids.shape[0]}) summing to the number of answers ({answer_ids.shape[0]})")
        if weights.shape != (answer_ids.shape[0],):
            raise ValueError(f"weights must have one entry per answer ({answer_ids.shape[0]}), "
                             f"got shape {tuple(weights.shape)}")
        states = self.question_states(image, question_ids, question_atts)
        # output_size: the repeat needs no host read of the counts (a stall per step on a GPU).
        counts, answers = counts.to(states.device), answer_ids.shape[0]
        nll = self.answer_nll(answer_ids, answer_atts, states.repeat_interleave(counts, dim=0, output_size=answers),
                              question_atts.repeat_interleave(counts, dim=0, output_size=answers))
        return {"loss_vqa": (weights.to(nll.dtype) * nll).sum() / image.shape[0]}

    # ------------------------------------------------------------------ inference
    def rank_answers(self, question_states: torch.Tensor, question_atts: torch.Tensor, answer_ids: torch.Tensor,
                     answer_atts: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(answer indices N x k, probabilities N x k), best first: the k answers with the most likely first token,
        re-ranked by log p(first token) - NLL(answer) and soft-maxed over the k."""
        num_questions, k = question_states.shape[0], min(k, answer_ids.shape[0])
        start = answer_ids[:1, :1].expand(num_questions, 1)  # every answer starts with <s>
        first_hidden = self.decode(start, None, question_states, question_atts)[:, 0]
        first_probs = F.softmax(self.text_decoder.cls(first_hidden), dim=-1).index_select(1, answer_ids[:, 1])
        topk_probs, topk_ids = first_probs.topk(k, dim=1)
        candidate_ids = answer_ids[topk_ids.reshape(-1)]
        candidate_atts = answer_atts[topk_ids.reshape(-1)]
        nll = self.answer_nll(candidate_ids, candidate_atts, question_states.repeat_interleave(k, dim=0),
                              question_atts.repeat_interleave(k, dim=0))
        scores = topk_probs.log() - nll.view(num_questions, k)
        probs, order = F.softmax(scores, dim=-1).topk(k, dim=1)
        return torch.gather(topk_ids, 1, order), probs

    def predict_answers(self, image: torch.Tensor, question_ids: torch.Tensor, question_atts: torch.Tensor,
                        answer_ids: torch.Tensor, answer_atts: torch.Tensor, k: int = 128
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ranked candidates for each question: (answer indices N x k, probabilities N x k); column 0 is the answer."""
        states = self.question_states(image, question_ids, question_atts)
        return self.rank_answers(states, question_atts, answer_ids, answer_atts, k)


register_model("cclm_vqa", "models.vqa:CCLMVQA")
