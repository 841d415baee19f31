"""Text/fusion encoder: embeddings, masks, bidirectional fusion layers, modes, memory lists, MLM head, and building it
from a Hugging Face XLM-R folder."""
import pytest
import torch
import torch.nn.functional as F
from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM, XLMRobertaModel

from models import text_encoder
from models.text_encoder import (TextBackbone, TextEncoder, build_text_encoder, extended_cross_attention_mask,
                                 extended_self_attention_mask, load_text_config)

HIDDEN, LAYERS, FUSION, VOCAB = 32, 4, 2, 40


def tiny_config(**overrides) -> XLMRobertaConfig:
    values = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=40, type_vocab_size=1, pad_token_id=1,
                  layer_norm_eps=1e-5, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    values.update(overrides)
    return XLMRobertaConfig(**values)


def make_encoder(attn="sdpa", seed=0, **kwargs) -> TextEncoder:
    torch.manual_seed(seed)
    return TextEncoder(tiny_config(), fusion_layer=FUSION, attn_implementation=attn, **kwargs).eval()


def random_ids(batch=3, length=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (batch, length), generator=g)
    ids[:, 0] = 0
    return ids


def test_embeddings_use_positions_from_zero_and_token_type_zero():
    enc = make_encoder()
    emb = enc.bert.embeddings
    ids = random_ids()
    assert emb.position_embeddings.padding_idx is None
    L = ids.shape[1]
    expected = emb.word_embeddings.weight[ids] + emb.token_type_embeddings.weight[0] + \
        emb.position_embeddings.weight[:L]
    expected = F.layer_norm(expected, (HIDDEN,), emb.LayerNorm.weight, emb.LayerNorm.bias, 1e-5)
    torch.testing.assert_close(emb(input_ids=ids), expected)


def test_text_mode_equals_huggingface_xlmr_given_bert_positions():
    enc = make_encoder()
    hf = XLMRobertaModel(tiny_config(num_hidden_layers=FUSION), add_pooling_layer=False).eval()
    text_part = {k[len("bert."):]: v for k, v in enc.state_dict().items()
                 if k.startswith("bert.") and not any(f"layer.{i}." in k for i in range(FUSION, LAYERS))}
    hf.load_state_dict(text_part, strict=True)
    ids = random_ids()
    atts = torch.ones_like(ids)
    atts[1, 5:] = 0
    ids[1, 5:] = 1
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    expected = hf(input_ids=ids, attention_mask=atts, position_ids=positions).last_hidden_state
    ours = enc(ids, atts, mode="text")
    torch.testing.assert_close(ours[atts.bool()], expected[atts.bool()], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", ["text", "multi_modal"])
def test_attention_is_bidirectional_without_padding(attn, mode):
    """Changing the last token must change the first token's state: no causal mask anywhere."""
    enc = make_encoder(attn)
    ids = random_ids()
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 1) % VOCAB
    memory = torch.randn(3, 5, HIDDEN)
    kwargs = dict(encoder_hidden_states=memory) if mode == "multi_modal" else {}
    out = enc(ids, torch.ones_like(ids), mode=mode, **kwargs)
    out_changed = enc(changed, torch.ones_like(ids), mode=mode, **kwargs)
    assert (out[:, 0] - out_changed[:, 0]).abs().max() > 1e-4


def test_fusion_layers_are_not_causal_flagged():
    enc = make_encoder()
    for layer in enc.bert.encoder.layer[FUSION:]:
        assert layer.attention.self.is_causal is False
        assert layer.crossattention.self.is_causal is False
    for layer in enc.bert.encoder.layer[:FUSION]:
        assert not hasattr(layer, "crossattention")


def test_padded_keys_are_ignored():
    enc = make_encoder()
    ids = random_ids(batch=1, length=6)
    padded = torch.cat([ids, torch.ones(1, 3, dtype=torch.long)], dim=1)
    atts = torch.cat([torch.ones(1, 6), torch.zeros(1, 3)], dim=1).long()
    short = enc(ids, torch.ones_like(ids), mode="text")
    long = enc(padded, atts, mode="text")
    torch.testing.assert_close(long[:, :6], short, atol=1e-5, rtol=1e-5)


def test_masked_memory_tokens_are_ignored():
    enc = make_encoder()
    ids = random_ids()
    memory = torch.randn(3, 6, HIDDEN)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]] * 3)
    other = memory.clone()
    other[:, 4:] = torch.randn(3, 2, HIDDEN) * 10
    a = enc(ids, None, encoder_hidden_states=memory, encoder_attention_mask=mask)
    b = enc(ids, None, encoder_hidden_states=other, encoder_attention_mask=mask)
    torch.testing.assert_close(a, b)


def test_mask_values_match_the_reference():
    mask = torch.tensor([[1, 0]])
    assert extended_self_attention_mask(mask, torch.float32).flatten().tolist() == [0.0, -10000.0]
    assert extended_cross_attention_mask(mask, torch.float32).flatten().tolist() == [0.0, -1e9]
    assert extended_cross_attention_mask(None, torch.float32) is None


def test_multi_modal_equals_text_then_fusion():
    enc = make_encoder()
    ids, memory = random_ids(), torch.randn(3, 5, HIDDEN)
    atts = torch.ones_like(ids)
    full = enc(ids, atts, encoder_hidden_states=memory, mode="multi_modal")
    text = enc(ids, atts, mode="text")
    fused = enc(attention_mask=atts, encoder_embeds=text, encoder_hidden_states=memory, mode="fusion")
    torch.testing.assert_close(full, fused)


def test_memory_list_alternates_over_fusion_layers():
    enc = make_encoder()
    ids, atts = random_ids(), torch.ones(3, 7, dtype=torch.long)
    m0, m1 = torch.randn(3, 5, HIDDEN), torch.randn(3, 4, HIDDEN)
    text = enc(ids, atts, mode="text")
    single = enc(attention_mask=atts, encoder_embeds=text, encoder_hidden_states=m0, mode="fusion")
    same_twice = enc(attention_mask=atts, encoder_embeds=text, encoder_hidden_states=[m0, m0], mode="fusion")
    torch.testing.assert_close(single, same_twice)
    # Layer 2 sees m0, layer 3 sees m1.
    hidden = text
    self_mask = extended_self_attention_mask(atts, hidden.dtype)
    for layer, memory in zip(enc.bert.encoder.layer[FUSION:], (m0, m1)):
        hidden = layer(hidden, self_mask, memory)
    pair = enc(attention_mask=atts, encoder_embeds=text, encoder_hidden_states=[m0, m1], mode="fusion")
    torch.testing.assert_close(pair, hidden)
    assert (pair - single).abs().max() > 1e-4


def test_sdpa_and_eager_agree(monkeypatch):
    import models.text_encoder as text_encoder

    ids, memory = random_ids(), torch.randn(3, 5, HIDDEN)
    atts = torch.ones_like(ids)
    atts[2, 4:] = 0
    mem_mask = torch.tensor([[1, 1, 1, 0, 0]] * 3)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(text_encoder.F, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    monkeypatch.setattr(text_encoder, "SDPA_ON_CPU", True)  # CPU runs the plain path by default: force SDPA here
    outs = [make_encoder(attn)(ids, atts, encoder_hidden_states=memory, encoder_attention_mask=mem_mask)
            for attn in ("sdpa", "eager")]
    assert calls  # the first encoder really went through SDPA
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def test_mlm_head_is_tied_and_gathers_masked_positions():
    enc = make_encoder()
    pred = enc.cls.predictions
    assert pred.decoder.weight is enc.bert.embeddings.word_embeddings.weight
    assert pred.decoder.bias is pred.bias
    hidden = torch.randn(2, 7, HIDDEN)
    masked_pos = torch.tensor([[3, 1], [0, 6]])
    logits = enc.mlm_logits(hidden, masked_pos)
    assert logits.shape == (2, 2, VOCAB)
    transformed = pred.transform(hidden)
    expected = transformed @ enc.bert.embeddings.word_embeddings.weight.t() + pred.bias
    torch.testing.assert_close(logits[1, 1], expected[1, 6])
    torch.testing.assert_close(logits[0, 0], expected[0, 3])


def test_encoder_width_changes_cross_attention_inputs():
    torch.manual_seed(0)
    enc = TextEncoder(tiny_config(), fusion_layer=FUSION, encoder_width=24).eval()
    assert enc.bert.encoder.layer[FUSION].crossattention.self.key.in_features == 24
    out = enc(random_ids(), None, encoder_hidden_states=torch.randn(3, 5, 24))
    assert out.shape == (3, 7, HIDDEN)


def test_grad_checkpointing_gives_the_same_gradients():
    ids, memory = random_ids(), torch.randn(3, 5, HIDDEN)
    grads = []
    for enable in (False, True):
        enc = make_encoder().train()
        enc.set_grad_checkpointing(enable)
        calls = []
        layer = enc.bert.encoder.layer[0]
        recompute = layer._gradient_checkpointing_func if enable else None
        if enable:
            layer._gradient_checkpointing_func = lambda *a, **k: calls.append(1) or recompute(*a, **k)
        torch.manual_seed(5)  # same dropout masks in both runs
        enc(ids, None, encoder_hidden_states=memory).sum().backward()
        grads.append(layer.attention.self.query.weight.grad)
        assert len(calls) == int(enable)
    torch.testing.assert_close(grads[0], grads[1])


def test_bad_arguments_raise_clear_errors():
    enc = make_encoder()
    with pytest.raises(ValueError, match="mode"):
        enc(random_ids(), mode="image")
    with pytest.raises(ValueError, match="encoder_embeds"):
        enc(mode="fusion")
    with pytest.raises(ValueError, match="attn_implementation"):
        TextEncoder(tiny_config(), attn_implementation="flash")


def test_load_text_config_reports_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_text_config(tmp_path)
    tiny_config().save_pretrained(tmp_path)
    assert load_text_config(tmp_path, num_hidden_layers=2).num_hidden_layers == 2


# ------------------------------------------------------------------ fast path (see bench/RESULTS.md)

def no_dropout_encoder(seed=0) -> TextEncoder:
    torch.manual_seed(seed)
    return TextEncoder(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), fusion_layer=FUSION)


def padded_batch():
    """4 rows of 9 tokens, 3 of them padded (one to 3 tokens): a third of the positions are padding."""
    ids = random_ids(batch=4, length=9)
    atts = torch.ones_like(ids)
    atts[1:, 6:] = 0
    atts[3, 3:] = 0
    ids[atts == 0] = 1
    return ids, atts


@pytest.mark.parametrize("multiple, padding_computed", [(1, 0), (16, 8), (64, 12)])
def test_training_on_real_tokens_only_matches_the_padded_computation(monkeypatch, multiple, padding_computed):
    """In training the layers run on the 24 real tokens plus the first padding positions up to a multiple of
    PACKED_TOKENS_MULTIPLE (at most the 12 there are); the rest of the padding is not computed at all."""
    monkeypatch.setattr(text_encoder, "PACKED_TOKENS_MULTIPLE", multiple)
    enc = no_dropout_encoder()
    ids, atts = padded_batch()
    kwargs = dict(encoder_hidden_states=torch.randn(2, 5, HIDDEN), memory_index=torch.tensor([0, 1, 1, 0]))
    expected = enc.eval()(ids, atts, **kwargs)
    got = enc.train()(ids, atts, **kwargs)
    real = atts.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-6, rtol=1e-5)
    assert int(got[~real].abs().amax(dim=-1).ne(0).sum()) == padding_computed


def test_grad_checkpointing_gives_the_same_gradients_on_real_tokens():
    enc = no_dropout_encoder().train()
    ids, atts = padded_batch()
    memory = torch.randn(4, 5, HIDDEN)

    def grads():
        enc.zero_grad(set_to_none=True)
        enc(ids, atts, encoder_hidden_states=memory).sum().backward()
        return {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}

    plain = grads()
    enc.set_grad_checkpointing(True)
    recomputed = grads()
    assert set(plain) == set(recomputed)
    for name, grad in plain.items():
        torch.testing.assert_close(recomputed[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_memory_index_equals_the_expanded_memory():
    enc = make_encoder()
    ids, atts = padded_batch()
    memory = torch.randn(2, 5, HIDDEN)
    memory_atts = torch.ones(2, 5, dtype=torch.long)
    memory_atts[1, 3:] = 0
    index = torch.tensor([1, 0, 1, 1])
    expected = enc(ids, atts, encoder_hidden_states=memory[index], encoder_attention_mask=memory_atts[index])
    got = enc(ids, atts, encoder_hidden_states=memory, encoder_attention_mask=memory_atts, memory_index=index)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="3 entries for 4 text rows"):
        enc(ids, atts, encoder_hidden_states=memory, memory_index=index[:3])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        enc(ids, atts, encoder_hidden_states=memory, memory_index=torch.tensor([0, 1, 2, 0]))


def test_memory_index_projects_each_memory_row_once():
    enc = make_encoder().eval()
    memory = torch.randn(3, 5, HIDDEN)
    index = torch.tensor([2, 0, 2, 2, 1])
    ids, atts = random_ids(batch=5), torch.ones(5, 7, dtype=torch.long)
    rows_seen = []
    hook = enc.bert.encoder.layer[FUSION].crossattention.self.key.register_forward_hook(
        lambda module, inputs, output: rows_seen.append(inputs[0].shape[0]))
    shared = enc(ids, atts, encoder_hidden_states=memory, memory_index=index)
    plain = enc(ids, atts, encoder_hidden_states=memory[index])
    hook.remove()
    assert rows_seen == [3, 5]
    torch.testing.assert_close(shared, plain, atol=1e-6, rtol=1e-5)


def test_trailing_padding_columns_are_not_computed():
    enc = make_encoder()
    ids = random_ids(batch=3, length=6)
    atts = torch.ones_like(ids)
    atts[1, 4:] = 0
    wide_ids = torch.cat([ids, torch.ones(3, 4, dtype=torch.long)], dim=1)
    wide_atts = torch.cat([atts, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    out = enc(wide_ids, wide_atts, mode="text")
    assert out.shape == (3, 10, HIDDEN)
    torch.testing.assert_close(out[:, :6], enc(ids, atts, mode="text"), atol=1e-6, rtol=1e-5)
    assert out[:, 6:].abs().max() == 0


def test_output_positions_give_the_states_at_those_positions():
    enc = make_encoder()
    ids, atts = padded_batch()
    memory = torch.randn(4, 5, HIDDEN)
    full = enc(ids, atts, encoder_hidden_states=memory)
    positions = torch.tensor([[0, 2], [1, 0], [5, 5], [0, 1]])
    got = enc(ids, atts, encoder_hidden_states=memory, output_positions=positions)
    expected = torch.gather(full, 1, positions.unsqueeze(-1).expand(-1, -1, HIDDEN))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[0, 9\)"):
        enc(ids, atts, encoder_hidden_states=memory, output_positions=positions + 4)


def test_text_layers_use_fast_dropout():
    from models.fast_ops import FastDropout

    encoder = make_encoder()
    assert all(type(m) is not torch.nn.Dropout for m in encoder.modules())
    assert sum(isinstance(m, FastDropout) for m in encoder.modules()) > 0


# --------------------------------------------------------------------------------------------- built from XLM-R

XLMR_HIDDEN, XLMR_VOCAB = 16, 30


@pytest.fixture(scope="module")
def tiny_xlmr_dir(tmp_path_factory):
    """A random 24-layer XLM-R masked LM saved in Hugging Face layout."""
    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=XLMR_VOCAB, hidden_size=XLMR_HIDDEN, num_hidden_layers=24,
                              num_attention_heads=2, intermediate_size=32, max_position_embeddings=20,
                              type_vocab_size=1, pad_token_id=1)
    model = XLMRobertaForMaskedLM(config).eval()
    path = tmp_path_factory.mktemp("xlmr24")
    model.save_pretrained(path)
    return path, model



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
    hidden = torch.randn(2, 3, XLMR_HIDDEN)
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


def test_inference_attends_per_memory_row_like_the_gathered_keys():
    """Without autograd on CPU, cross-attention batches the rows of each memory row (no per-row copy of its keys/
    values); unsorted and sorted memory indices give what the gathered keys/values give."""
    enc = make_encoder()
    ids, atts = padded_batch()
    memory = torch.randn(3, 5, HIDDEN)
    memory_atts = torch.ones(3, 5, dtype=torch.long)
    memory_atts[1, 2:] = 0
    for index in (torch.tensor([2, 0, 2, 1]), torch.tensor([0, 1, 1, 2])):
        expected = enc(ids, atts, encoder_hidden_states=memory[index], encoder_attention_mask=memory_atts[index])
        with torch.no_grad():
            got = enc(ids, atts, encoder_hidden_states=memory, encoder_attention_mask=memory_atts, memory_index=index)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("grad", [False, True])
def test_projected_memory_equals_the_memory_it_was_projected_from(grad):
    enc = make_encoder()
    ids, atts = padded_batch()
    text = enc(ids, atts, mode="text")
    memory = torch.randn(2, 5, HIDDEN)
    memory_atts = torch.ones(2, 5, dtype=torch.long)
    memory_atts[0, 4:] = 0
    index = torch.tensor([1, 0, 1, 1])
    positions = torch.tensor([[0], [0], [2], [0]])
    with torch.set_grad_enabled(grad):
        projected = enc.project_memory(memory, memory_atts)
        for kwargs in ({}, {"output_positions": positions}):
            expected = enc(attention_mask=atts, encoder_embeds=text, encoder_hidden_states=memory,
                           encoder_attention_mask=memory_atts, mode="fusion", memory_index=index, **kwargs)
            got = enc(attention_mask=atts, encoder_embeds=text, encoder_hidden_states=projected, mode="fusion",
                      memory_index=index, **kwargs)
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert len(projected.layers) == LAYERS - FUSION and projected.rows == 2


def test_projected_memory_misuse_is_an_error():
    enc = make_encoder()
    ids, atts = padded_batch()
    projected = enc.project_memory(torch.randn(2, 5, HIDDEN))
    with pytest.raises(ValueError, match="carries its own mask"):
        enc(ids, atts, encoder_hidden_states=projected, encoder_attention_mask=torch.ones(2, 5),
            memory_index=torch.tensor([0, 1, 0, 1]))
    shorter = projected._replace(layers=projected.layers[:1])
    with pytest.raises(ValueError, match="1 fusion layers, this encoder has 2"):
        enc(ids, atts, encoder_hidden_states=shorter, memory_index=torch.tensor([0, 1, 0, 1]))
