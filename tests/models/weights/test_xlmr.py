"""Hugging Face XLM-R keys -> text encoder keys: the reference's layer selection and renames."""
import pytest
import torch

from models.weights.xlmr import layer_selection, xlmr_to_text_encoder

HIDDEN, VOCAB = 16, 30


def _fake_xlmr_state(num_layers=24):
    sd = {"roberta.embeddings.word_embeddings.weight": torch.zeros(VOCAB, HIDDEN),
          "roberta.embeddings.position_ids": torch.arange(20)[None],
          "roberta.pooler.dense.weight": torch.zeros(HIDDEN, HIDDEN),
          "lm_head.dense.weight": torch.zeros(HIDDEN, HIDDEN), "lm_head.layer_norm.bias": torch.zeros(HIDDEN),
          "lm_head.bias": torch.zeros(VOCAB), "lm_head.decoder.weight": torch.zeros(VOCAB, HIDDEN)}
    for k in range(num_layers):
        sd[f"roberta.encoder.layer.{k}.attention.self.query.weight"] = torch.full((2, 2), float(k))
        sd[f"roberta.encoder.layer.{k}.output.LayerNorm.bias"] = torch.full((2,), float(k))
    return sd


def test_xlmr_conversion_selects_odd_layers_and_renames():
    out = xlmr_to_text_encoder(_fake_xlmr_state(), num_target_layers=12)
    for target, source in ((0, 1), (5, 11), (6, 13), (11, 23)):
        assert out[f"bert.encoder.layer.{target}.attention.self.query.weight"][0, 0].item() == source
        assert out[f"bert.encoder.layer.{target}.output.LayerNorm.bias"][0].item() == source
    assert not any(k.startswith("bert.encoder.layer.12.") for k in out)
    assert {"cls.predictions.transform.dense.weight", "cls.predictions.transform.LayerNorm.bias",
            "cls.predictions.bias", "cls.predictions.decoder.weight",
            "bert.embeddings.word_embeddings.weight"} <= set(out)
    assert not any("pooler" in k or "position_ids" in k or k.startswith(("roberta.", "lm_head.")) for k in out)


def test_xlmr_conversion_keeps_all_layers_when_counts_match():
    out = xlmr_to_text_encoder(_fake_xlmr_state(12), num_target_layers=12)
    assert out["bert.encoder.layer.7.attention.self.query.weight"][0, 0].item() == 7
    with pytest.raises(ValueError, match="cannot select"):
        xlmr_to_text_encoder(_fake_xlmr_state(10), num_target_layers=12)
    with pytest.raises(ValueError, match="XLM-R"):
        xlmr_to_text_encoder({"foo.weight": torch.zeros(1)}, num_target_layers=12)



def test_layer_selection_follows_the_reference():
    assert layer_selection(24, 12) == {1: 0, 3: 1, 5: 2, 7: 3, 9: 4, 11: 5, 13: 6, 15: 7, 17: 8, 19: 9, 21: 10, 23: 11}
    assert layer_selection(12, 12) == {i: i for i in range(12)}
    with pytest.raises(ValueError, match="cannot select"):
        layer_selection(24, 6)

