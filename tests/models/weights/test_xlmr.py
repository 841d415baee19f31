"""Hugging Face XLM-R folders -> text encoder keys: reading (sharded or not), the reference's layer selection and
renames, and a folder without usable weights a user error naming it."""
import json

import pytest
import torch
from safetensors.torch import save_file

from models.weights.errors import CheckpointMismatchError, WeightsFileError
from models.weights.xlmr import layer_selection, read_hf_state_dict, xlmr_text_encoder_weights, xlmr_to_text_encoder

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



def test_a_folder_without_usable_weights_is_a_user_error_naming_it(tmp_path):
    with pytest.raises(WeightsFileError, match=f"no model.safetensors or pytorch_model.bin .* in {tmp_path}"):
        read_hf_state_dict(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken header}")
    with pytest.raises(WeightsFileError, match=r"model\.safetensors: not a valid safetensors file"):
        read_hf_state_dict(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin.index.json").write_text('{"weight_map": {"a": "pytorch_model-00001.bin"}}')
    with pytest.raises(WeightsFileError, match=r"index\.json: shard 'pytorch_model-00001\.bin' is listed but absent"):
        read_hf_state_dict(tmp_path)
    (tmp_path / "pytorch_model.bin.index.json").write_text('["not an index"]')
    with pytest.raises(WeightsFileError, match=r"index\.json: not a Hugging Face shard index"):
        read_hf_state_dict(tmp_path)


def test_sharded_weights_are_read_and_converted(tmp_path):
    state = _fake_xlmr_state(24)
    names = sorted(state)
    torch.save({k: state[k] for k in names[:10]}, tmp_path / "pytorch_model-00001.bin")
    torch.save({k: state[k] for k in names[10:]}, tmp_path / "pytorch_model-00002.bin")
    shard = {k: f"pytorch_model-0000{1 + (i >= 10)}.bin" for i, k in enumerate(names)}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": shard}))
    out = xlmr_text_encoder_weights(tmp_path, 12)
    assert out["bert.encoder.layer.11.attention.self.query.weight"][0, 0].item() == 23
    save_file({"foo.weight": torch.zeros(1)}, str(tmp_path / "model.safetensors"))  # preferred, but not XLM-R
    with pytest.raises(CheckpointMismatchError, match=f"text_encoder {tmp_path}: XLM-R conversion: no"):
        xlmr_text_encoder_weights(tmp_path, 12)
