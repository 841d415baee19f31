"""State-dict filters, checkpoint reading, XLM-R -> text encoder conversion and load reporting."""
import logging

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

from models.checkpoint import (load_reference_checkpoint, load_state_dict_reporting, ours_to_reference,
                               reference_to_ours, strip_prefixes, xlmr_to_text_encoder)
from models.text_encoder import TextBackbone, build_text_encoder

HIDDEN, VOCAB = 16, 30


@pytest.fixture(scope="module")
def tiny_xlmr_dir(tmp_path_factory):
    """A random 24-layer XLM-R masked LM saved in Hugging Face layout."""
    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=24, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=20, type_vocab_size=1, pad_token_id=1)
    model = XLMRobertaForMaskedLM(config).eval()
    path = tmp_path_factory.mktemp("xlmr24")
    model.save_pretrained(path)
    return path, model


def test_strip_prefixes():
    sd = {"module._orig_mod.a": 1, "_orig_mod.module.b": 2, "c.module.d": 3}
    assert strip_prefixes(sd) == {"a": 1, "b": 2, "c.module.d": 3}


def test_load_reference_checkpoint_formats(tmp_path):
    sd = {"module.temp": torch.tensor(0.07), "text_proj.weight": torch.ones(2, 3)}
    torch.save({"model": sd, "config": {"embed_dim": 2}}, tmp_path / "a.th")
    torch.save(sd, tmp_path / "b.pth")
    save_file(sd, str(tmp_path / "c.safetensors"))
    for name in ("a.th", "b.pth", "c.safetensors"):
        loaded = load_reference_checkpoint(tmp_path / name)
        assert sorted(loaded) == ["temp", "text_proj.weight"], name
    torch.save({"weights": [1, 2]}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth"):
        load_reference_checkpoint(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="nothere.th"):
        load_reference_checkpoint(tmp_path / "nothere.th")


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


def test_build_text_encoder_from_a_24_layer_hf_directory(tiny_xlmr_dir):
    path, hf = tiny_xlmr_dir
    enc, new_params = build_text_encoder(path, num_hidden_layers=12)
    ours = enc.state_dict()
    theirs = hf.state_dict()
    for target, source in ((0, 1), (6, 13), (11, 23)):
        for suffix in ("attention.self.key.weight", "intermediate.dense.bias", "output.LayerNorm.weight"):
            torch.testing.assert_close(ours[f"bert.encoder.layer.{target}.{suffix}"],
                                       theirs[f"roberta.encoder.layer.{source}.{suffix}"])
    torch.testing.assert_close(ours["bert.embeddings.position_embeddings.weight"],
                               theirs["roberta.embeddings.position_embeddings.weight"])
    expected_new = {n for n, _ in enc.named_parameters() if ".crossattention." in n}
    assert set(new_params) == expected_new
    assert {int(n.split(".")[3]) for n in new_params} == set(range(6, 12))
    # The MLM head computes what XLM-R's LM head computes, with tied decoder weight and bias.
    hidden = torch.randn(2, 3, HIDDEN)
    torch.testing.assert_close(enc.cls(hidden), hf.lm_head(hidden), atol=1e-5, rtol=1e-5)
    assert enc.cls.predictions.decoder.weight is enc.bert.embeddings.word_embeddings.weight


def test_bare_text_encoder_has_the_fine_tuning_layout(tiny_xlmr_dir):
    path, hf = tiny_xlmr_dir
    enc, new_params = build_text_encoder(path, num_hidden_layers=12, bare=True)
    assert isinstance(enc, TextBackbone)
    keys = set(enc.state_dict())
    assert {"embeddings.word_embeddings.weight", "encoder.layer.11.output.LayerNorm.bias"} <= keys
    assert not any(k.startswith(("bert.", "cls.")) for k in keys)
    assert set(new_params) == {n for n, _ in enc.named_parameters() if ".crossattention." in n}
    torch.testing.assert_close(enc.encoder.layer[11].output.dense.weight,
                               hf.roberta.encoder.layer[23].output.dense.weight)


def test_build_text_encoder_from_pytorch_model_bin(tiny_xlmr_dir, tmp_path):
    path, hf = tiny_xlmr_dir
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    enc, new_params = build_text_encoder(tmp_path, num_hidden_layers=12)
    torch.testing.assert_close(enc.state_dict()["bert.encoder.layer.3.attention.output.dense.weight"],
                               hf.state_dict()["roberta.encoder.layer.7.attention.output.dense.weight"])
    assert len(new_params) == 6 * 10


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(4, 2)
        self.out = nn.Linear(2, 4, bias=False)
        self.out.weight = self.emb.weight
        self.extra = nn.Linear(2, 2)


def test_load_state_dict_reporting_names_keys(caplog):
    model = _Tied()
    sd = {"emb.weight": torch.ones(4, 2), "extra.weight": torch.ones(2, 2), "stray.weight": torch.ones(1)}
    with caplog.at_level(logging.WARNING):
        report = load_state_dict_reporting(model, sd, what="toy")
    assert report.missing == ["extra.bias"]  # out.weight is tied to the loaded emb.weight
    assert report.unexpected == ["stray.weight"]
    assert "extra.bias" in caplog.text and "stray.weight" in caplog.text
    assert torch.equal(model.out.weight, torch.ones(4, 2))
    with pytest.raises(KeyError, match="extra.bias"):
        load_state_dict_reporting(model, sd, what="toy", strict=True)
    assert load_state_dict_reporting(model, sd, ignore_missing=("extra.",)).missing == []
    with pytest.raises(RuntimeError, match="toy"):
        load_state_dict_reporting(model, {"emb.weight": torch.ones(5, 2)}, what="toy")


def test_reference_to_ours_moves_patch_merging_and_drops_buffers():
    ref = {"module.vision_encoder.layers.0.downsample.norm.weight": torch.ones(4),
           "vision_encoder.layers.0.blocks.1.attn_mask": torch.zeros(1),
           "vision_encoder.layers.0.blocks.1.attn.relative_position_index": torch.zeros(1),
           "text_encoder.bert.embeddings.position_ids": torch.arange(5)[None],
           "text_encoder.bert.embeddings.position_embeddings.weight": torch.zeros(5, 2),
           "temp": torch.tensor(0.07)}
    ours = reference_to_ours(ref)
    assert sorted(ours) == ["temp", "text_encoder.bert.embeddings.position_embeddings.weight",
                            "vision_encoder.layers.1.downsample.norm.weight"]
    back = ours_to_reference(ours)
    assert "vision_encoder.layers.0.downsample.norm.weight" in back
    assert back["text_encoder.bert.embeddings.position_ids"].tolist() == [[0, 1, 2, 3, 4]]


def test_golden_state_round_trips(golden_dir):
    ref = load_reference_checkpoint(golden_dir / "tiny_state.pt")
    back = ours_to_reference(reference_to_ours(ref))
    buffers = {k for k in ref if k.endswith(("relative_position_index", "attn_mask"))}
    assert set(back) == set(ref) - buffers
    assert all(torch.equal(back[k], ref[k]) for k in back)
