"""Fine-tuning models on tiny offline configs: forward + backward, the task-specific computations checked against
hand-written formulas, and loading a (tiny) CCLM pre-training checkpoint through the reference's rules."""
import pytest
import torch
import torch.nn.functional as F
from transformers import XLMRobertaConfig

import models.cclm as cclm_module
from models.cclm import CCLMPretrain
from models.classification import CCLMClassification
from models.factory import create_model
from models.losses import HardNegatives
from models.nlvr import CCLMNLVR
from models.retrieval import CCLMRetrieval
from models.vqa import CCLMVQA, causal_self_attention_mask
from models.weights.finetune import ours_to_task_reference
from models.weights.pretrain import ours_to_reference
from models.weights.swin import interpolate_relative_position_bias_table

WIDTH, VOCAB, B, L = 64, 40, 4, 8
PAD = 1
TINY_VISION = {"image_res": 64, "window_size": 2, "embed_dim": 8, "depths": [1, 1, 2, 1], "num_heads": [1, 1, 2, 2],
               "vision_width": WIDTH}
# pre-training vs fine-tuning resolution: a larger window (cubic interpolation needs windows of 3 and more)
TINY_VISION_96 = dict(TINY_VISION, image_res=96, window_size=3)
TINY_VISION_160 = dict(TINY_VISION, image_res=160, window_size=5)
CLS_HEAD = {f"cls_head.{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias")}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    XLMRobertaConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=4 * WIDTH, max_position_embeddings=40, type_vocab_size=1, pad_token_id=PAD,
                     layer_norm_eps=1e-5).save_pretrained(path / "xlmr")
    return path


def tiny_config(vision=TINY_VISION, **overrides):
    config = {"vision_config": dict(vision), "image_res": vision["image_res"], "text_encoder": "xlmr",
              "text_num_hidden_layers": 4, "embed_dim": 16, "temp": 0.07, "num_labels": 3, "num_dec_layers": 2}
    config.update(overrides)
    return config


def build(cls, root, seed=0, vision=TINY_VISION):
    torch.manual_seed(seed)
    return cls(tiny_config(vision), root=root)


def images(n=B, seed=3, res=64):
    return torch.randn(n, 3, res, res, generator=torch.Generator().manual_seed(seed))


def text(n=B, length=L, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (n, length), generator=g)
    ids[:, 0] = 0
    atts = torch.ones_like(ids)
    atts[n // 2:, length - 3:] = 0
    ids[atts == 0] = PAD
    return ids, atts


def answers():
    """Five answers '<s> x (y) </s>' padded with 1; answer 3 shares its first token with answer 0."""
    ids = torch.tensor([[0, 5, 2, 1], [0, 6, 7, 2], [0, 8, 2, 1], [0, 5, 9, 2], [0, 10, 2, 1]])
    return ids, (ids != PAD).long()


def has_grad(model, prefix):
    grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
    return bool(grads) and all(g is not None and g.abs().sum() > 0 for g in grads)


# --------------------------------------------------------------------------------------------- retrieval

def test_retrieval_forward_backward(root):
    model = build(CCLMRetrieval, root)
    ids, atts = text()
    losses = model(images(), ids, atts, torch.tensor([0, 0, 1, 2]))
    assert set(losses) == {"loss_itc", "loss_itm"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for prefix in ("vision_encoder.patch_embed", "text_proj", "vision_proj", "temp", "itm_head",
                   "text_encoder.bert.encoder.layer.3.crossattention.self.key"):
        assert has_grad(model, prefix), prefix
    assert model.init_params == []


def test_retrieval_itc_treats_captions_of_one_image_as_positives(root):
    model = build(CCLMRetrieval, root).eval()
    ids, atts = text()
    image = images()
    idx = torch.tensor([7, 7, 1, 2])
    negatives = HardNegatives(torch.tensor([2, 3, 0, 0]), torch.tensor([2, 2, 3, 0]))
    with torch.no_grad():
        loss = model(image, ids, atts, idx, hard_negatives=negatives)["loss_itc"]
        _, _, img_feat = model.image_embeds_and_feat(image)
        _, txt_feat = model.text_embeds_and_feat(ids, atts)
    sim = img_feat @ txt_feat.t() / model.temp
    expected = 0.0
    for i in range(B):  # soft targets: uniform over the same-id columns, both directions
        positives = [j for j in range(B) if idx[j] == idx[i]]
        expected -= sum(F.log_softmax(sim[i], 0)[j] for j in positives) / len(positives) / B / 2
        expected -= sum(F.log_softmax(sim[:, i], 0)[j] for j in positives) / len(positives) / B / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_retrieval_itm_scores_positives_and_the_given_negatives(root):
    model = build(CCLMRetrieval, root).eval()
    ids, atts = text()
    image = images()
    negatives = HardNegatives(x_for_y=torch.tensor([2, 3, 0, 1]), y_for_x=torch.tensor([3, 2, 1, 0]))
    with torch.no_grad():
        loss = model(image, ids, atts, torch.arange(B), hard_negatives=negatives)["loss_itm"]
        image_embeds, image_atts, _ = model.image_embeds_and_feat(image)
        text_embeds, _ = model.text_embeds_and_feat(ids, atts)

        def pair_logits(i, t):
            fused = model.get_cross_embeds(image_embeds[i:i + 1], image_atts[i:i + 1],
                                           text_embeds=text_embeds[t:t + 1], text_atts=atts[t:t + 1])
            return model.itm_head(fused[:, 0])[0]

        terms = [F.cross_entropy(pair_logits(b, b)[None], torch.tensor([1])) for b in range(B)]
        terms += [F.cross_entropy(pair_logits(int(negatives.x_for_y[b]), b)[None], torch.tensor([0]))
                  for b in range(B)]
        terms += [F.cross_entropy(pair_logits(b, int(negatives.y_for_x[b]))[None], torch.tensor([0]))
                  for b in range(B)]
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_retrieval_never_draws_a_caption_of_the_same_image_as_negative(root, monkeypatch):
    model = build(CCLMRetrieval, root)
    drawn, seen_idx = [], []
    original = cclm_module.sample_hard_negatives

    def spy(x_feat, y_feat, temp, idx=None, generator=None):
        seen_idx.append(idx)
        result = original(x_feat, y_feat, temp, idx)
        drawn.append(result)
        return result

    monkeypatch.setattr(cclm_module, "sample_hard_negatives", spy)
    ids, atts = text()
    idx = torch.tensor([0, 0, 1, 1])
    for seed in range(5):
        torch.manual_seed(seed)
        model(images(), ids, atts, idx)
    assert all(torch.equal(i, idx) for i in seen_idx)
    for negatives in drawn:
        for b in range(B):
            assert idx[negatives.x_for_y[b]] != idx[b]
            assert idx[negatives.y_for_x[b]] != idx[b]


def test_itm_score_over_many_pairs_equals_one_pair_at_a_time(root):
    model = build(CCLMRetrieval, root).eval()
    ids, atts = text()
    with torch.no_grad():
        image_embeds, image_atts, _ = model.image_embeds_and_feat(images(2))
        text_embeds, _ = model.text_embeds_and_feat(ids, atts)
        # image 1 against all four texts, as the evaluator's top-k stage does
        batched = model.itm_score(image_embeds[1:2].expand(B, -1, -1), image_atts[1:2].expand(B, -1), text_embeds,
                                  atts)
        single = [model.itm_score(image_embeds[1:2], image_atts[1:2], text_embeds[t:t + 1], atts[t:t + 1])
                  for t in range(B)]
    assert batched.shape == (B,)
    assert torch.allclose(batched, torch.cat(single), atol=1e-5)
    with pytest.raises(ValueError, match="2 image rows but 4 text rows"):
        model.itm_score(image_embeds, image_atts, text_embeds, atts)


# --------------------------------------------------------------------------------------------- classification

def test_classification_forward_backward(root):
    model = build(CCLMClassification, root)
    ids, atts = text()
    logits = model.logits(images(), ids, atts)
    assert logits.shape == (B, 3)
    losses = model(images(), ids, atts, torch.tensor([0, 1, 2, 1]))
    assert set(losses) == {"loss_cls"}
    losses["loss_cls"].backward()
    assert has_grad(model, "cls_head") and has_grad(model, "vision_encoder.patch_embed")
    assert set(model.init_params) == CLS_HEAD
    assert isinstance(model.cls_head[2], torch.nn.GELU) and model.cls_head[0].out_features == 2 * WIDTH


def test_classification_rejects_a_bad_label_count(root):
    with pytest.raises(ValueError, match="num_labels"):
        CCLMClassification(tiny_config(num_labels=1), root=root)


# --------------------------------------------------------------------------------------------- nlvr

def test_nlvr_forward_backward(root):
    model = build(CCLMNLVR, root)
    ids, atts = text()
    losses = model(images(seed=3), images(seed=4), ids, atts, torch.tensor([0, 1, 1, 0]))
    losses["loss_cls"].backward()
    assert has_grad(model, "cls_head") and has_grad(model, "vision_encoder.patch_embed")
    layers = model.text_encoder.bert.encoder.layer
    assert len(layers) == 6 and model.text_encoder.fusion_layer == 2
    for first in (2, 4):  # shared key/value: one parameter, gradients from both images
        assert layers[first].crossattention.self.key.weight is layers[first + 1].crossattention.self.key.weight
        assert layers[first].crossattention.self.query.weight is not layers[first + 1].crossattention.self.query.weight
    assert set(model.init_params) == CLS_HEAD


def test_nlvr_first_layer_of_a_pair_sees_the_left_image_the_second_the_right(root):
    model = build(CCLMNLVR, root).eval()
    left, right = images(seed=3), images(seed=4)
    memories = {}

    def capture(layer_index):
        def hook(module, args, kwargs):
            memories[layer_index] = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
        return hook

    for k, layer in enumerate(model.text_encoder.bert.encoder.layer):
        if k >= 2:
            layer.crossattention.register_forward_pre_hook(capture(k), with_kwargs=True)
    ids, atts = text()
    with torch.no_grad():
        model.logits(left, right, ids, atts)
        left_embeds, right_embeds = model.vision_encoder(left), model.vision_encoder(right)
    for k in (2, 4):
        assert torch.allclose(memories[k], left_embeds, atol=1e-6)
        assert torch.allclose(memories[k + 1], right_embeds, atol=1e-6)


# --------------------------------------------------------------------------------------------- vqa

def test_vqa_forward_backward(root):
    model = build(CCLMVQA, root)
    ids, atts = text()
    answer_ids, answer_atts = answers()
    losses = model(images(), ids, atts, answer_ids, answer_atts, torch.ones(5), [2, 1, 1, 1])
    assert set(losses) == {"loss_vqa"}
    losses["loss_vqa"].backward()
    for prefix in ("text_decoder.bert.encoder.layer.0.crossattention", "text_decoder.cls.predictions.transform",
                   "text_encoder.bert.encoder.layer.3", "vision_encoder.patch_embed"):
        assert has_grad(model, prefix), prefix
    decoder = model.text_decoder
    assert decoder.cls.predictions.decoder.weight is decoder.bert.embeddings.word_embeddings.weight


def test_vqa_answer_counts_are_checked(root):
    model = build(CCLMVQA, root)
    ids, atts = text()
    answer_ids, answer_atts = answers()
    with pytest.raises(ValueError, match="answer_counts"):
        model(images(), ids, atts, answer_ids, answer_atts, torch.ones(5), [1, 1, 1, 1])


def test_vqa_decoder_depth_must_match_the_fusion_layers(root):
    with pytest.raises(ValueError, match="num_dec_layers"):
        CCLMVQA(tiny_config(num_dec_layers=3), root=root)


def test_causal_mask_values():
    mask = causal_self_attention_mask(torch.tensor([[1, 1, 0]]), torch.float32)
    expected = torch.tensor([[0.0, -10000.0, -10000.0], [0.0, 0.0, -10000.0], [0.0, 0.0, -10000.0]])
    assert torch.equal(mask[0, 0], expected)


def test_vqa_decoder_is_causal(root):
    model = build(CCLMVQA, root).eval()
    ids, atts = text(n=2)
    answer_ids, answer_atts = answers()
    changed = answer_ids.clone()
    changed[:, 2] = 11
    with torch.no_grad():
        states = model.question_states(images(2), ids, atts)
        states, q_atts = states[[0, 0, 1, 1, 0]], atts[[0, 0, 1, 1, 0]]
        before = model.decode(answer_ids, answer_atts, states, q_atts)
        after = model.decode(changed, answer_atts, states, q_atts)
    assert torch.allclose(before[:, :2], after[:, :2], atol=1e-6)
    assert not torch.allclose(before[:, 2], after[:, 2], atol=1e-3)


def test_vqa_loss_is_the_weighted_sum_of_answer_nlls_per_question(root):
    model = build(CCLMVQA, root).eval()
    ids, atts = text()
    image = images()
    answer_ids, answer_atts = answers()
    weights = torch.tensor([0.5, 0.5, 1.0, 1.0, 1.0])
    counts = [2, 1, 1, 1]
    owner = [0, 0, 1, 2, 3]
    with torch.no_grad():
        loss = model(image, ids, atts, answer_ids, answer_atts, weights, counts)["loss_vqa"]
        states = model.question_states(image, ids, atts)
        log_probs = F.log_softmax(model.text_decoder.cls(model.decode(answer_ids, answer_atts, states[owner],
                                                                      atts[owner])), dim=-1)
    expected = 0.0
    for a in range(5):  # next-token NLL of every non-pad token after <s>, </s> included
        nll = -sum(log_probs[a, t - 1, answer_ids[a, t]] for t in range(1, 4) if answer_ids[a, t] != PAD)
        expected += weights[a] * nll
    assert loss.item() == pytest.approx((expected / B).item(), rel=1e-5)


def test_vqa_rank_answers_follows_the_reference_scoring(root):
    model = build(CCLMVQA, root).eval()
    ids, atts = text(n=2)
    answer_ids, answer_atts = answers()
    with torch.no_grad():
        states = model.question_states(images(2), ids, atts)
        start = torch.zeros(2, 1, dtype=torch.long)
        first = F.softmax(model.text_decoder.cls(model.decode(start, None, states, atts)[:, 0]), dim=-1)
        p_firsts = first[:, answer_ids[:, 1]]
        # answers 0 and 3 share a first token: pick a k whose cut does not split that tie
        k = 3 if all(row.sort(descending=True).values[2] != row.sort(descending=True).values[3]
                     for row in p_firsts) else 2
        ranked, probs = model.rank_answers(states, atts, answer_ids, answer_atts, k=k)
        for q in range(2):
            p_first = p_firsts[q]
            candidates = p_first.topk(k).indices
            nll = model.answer_nll(answer_ids[candidates], answer_atts[candidates], states[q:q + 1].expand(k, -1, -1),
                                   atts[q:q + 1].expand(k, -1))
            scores = F.softmax(p_first[candidates].log() - nll, dim=0)
            order = scores.argsort(descending=True)
            assert ranked[q].tolist() == candidates[order].tolist()
            assert torch.allclose(probs[q], scores[order], atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(2), atol=1e-5)
    with torch.no_grad():  # k larger than the answer list ranks every answer
        all_ids, _ = model.predict_answers(images(2), ids, atts, answer_ids, answer_atts, k=50)
    assert sorted(all_ids[0].tolist()) == list(range(5))


# --------------------------------------------------------------------------------------------- loading

def tiny_pretrained_model(root) -> CCLMPretrain:
    """A tiny CCLM pre-training model with non-trivial biases (seeded)."""
    torch.manual_seed(11)
    model = CCLMPretrain(tiny_config(), root=root)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.uniform_(-0.1, 0.1)
    return model


@pytest.fixture(scope="module")
def pretrain_reference_state(root):
    """A tiny CCLM pre-training model's state dict in the reference layout."""
    return ours_to_reference(tiny_pretrained_model(root).state_dict())


def test_retrieval_loads_a_pretraining_checkpoint(root, pretrain_reference_state):
    model = build(CCLMRetrieval, root, seed=5)
    report = model.load_pretrained(pretrain_reference_state)
    assert report.missing == [] and report.unexpected == [] and report.initialised == []
    assert {k for k in report.dropped if k.startswith("bbox_head.")} == \
        {k for k in pretrain_reference_state if k.startswith("bbox_head.")}
    assert {k for k in report.dropped if k.startswith("text_encoder.cls.")} == \
        {k for k in pretrain_reference_state if k.startswith("text_encoder.cls.")}
    own = model.state_dict()
    for key in ("temp", "itm_head.3.bias", "text_proj.weight", "text_encoder.bert.encoder.layer.2.crossattention."
                "self.key.bias", "text_encoder.bert.embeddings.word_embeddings.weight",
                "vision_encoder.patch_embed.proj.weight"):
        assert torch.equal(own[key], pretrain_reference_state[key]), key
    # reference PatchMerging of stage 0 is timm's downsample of stage 1
    assert torch.equal(own["vision_encoder.layers.1.downsample.reduction.weight"],
                       pretrain_reference_state["vision_encoder.layers.0.downsample.reduction.weight"])


def test_our_own_pretraining_checkpoint_loads_like_the_reference_one(root, pretrain_reference_state):
    ours = build(CCLMPretrain, root, seed=4)
    ours.load_pretrained(pretrain_reference_state, strict=True)
    from_ours, from_reference = build(CCLMVQA, root, seed=5), build(CCLMVQA, root, seed=6)
    report = from_ours.load_pretrained(ours.state_dict())
    from_reference.load_pretrained(pretrain_reference_state)
    assert report.missing == [] and report.unexpected == []
    for key, value in from_reference.state_dict().items():
        assert torch.equal(from_ours.state_dict()[key], value), key


def test_classification_reports_its_new_head(root, pretrain_reference_state):
    model = build(CCLMClassification, root, seed=5)
    report = model.load_pretrained(pretrain_reference_state)
    assert report.missing == [] and report.unexpected == []
    assert set(report.initialised) == CLS_HEAD
    assert {"itm_head.0.weight", "text_proj.weight", "vision_proj.weight", "temp"} <= set(report.dropped)


def test_nlvr_loads_each_fusion_layer_into_its_pair(root, pretrain_reference_state):
    model = build(CCLMNLVR, root, seed=5)
    report = model.load_pretrained(pretrain_reference_state)
    assert report.missing == [] and report.unexpected == []
    assert set(report.initialised) == CLS_HEAD
    own = model.state_dict()
    src = "text_encoder.bert.encoder.layer.{}.{}"
    for old, new in ((0, (0,)), (1, (1,)), (2, (2, 3)), (3, (4, 5))):
        for name in ("attention.self.query.weight", "output.LayerNorm.bias"):
            for layer in new:
                assert torch.equal(own[src.format(layer, name)], pretrain_reference_state[src.format(old, name)])
    for old, new in ((2, (2, 3)), (3, (4, 5))):
        for name in ("crossattention.self.key.weight", "crossattention.self.value.bias",
                     "crossattention.self.query.weight"):
            for layer in new:
                assert torch.equal(own[src.format(layer, name)], pretrain_reference_state[src.format(old, name)])


def test_vqa_decoder_starts_from_the_fusion_layers(root, pretrain_reference_state):
    model = build(CCLMVQA, root, seed=5)
    report = model.load_pretrained(pretrain_reference_state)
    assert report.missing == [] and report.unexpected == []
    own = model.state_dict()
    ref = pretrain_reference_state
    for i in range(2):
        for name in ("attention.self.key.weight", "crossattention.self.value.weight", "output.dense.bias"):
            assert torch.equal(own[f"text_decoder.bert.encoder.layer.{i}.{name}"],
                               ref[f"text_encoder.bert.encoder.layer.{2 + i}.{name}"])
    for name in ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                 "embeddings.LayerNorm.bias"):
        assert torch.equal(own[f"text_decoder.bert.{name}"], ref[f"text_encoder.bert.{name}"])
        assert torch.equal(own[f"text_encoder.bert.{name}"], ref[f"text_encoder.bert.{name}"])
    for name in ("predictions.bias", "predictions.transform.dense.weight", "predictions.transform.LayerNorm.bias"):
        assert torch.equal(own[f"text_decoder.cls.{name}"], ref[f"text_encoder.cls.{name}"])
    # the decoder's embeddings are a copy, not the encoder's tensor
    assert model.text_decoder.bert.embeddings.word_embeddings.weight is not \
        model.text_encoder.bert.embeddings.word_embeddings.weight


def test_loading_into_a_larger_window_resizes_the_bias_tables(root):
    pretrain = ours_to_reference(build(CCLMPretrain, root, seed=12, vision=TINY_VISION_96).state_dict())
    model = build(CCLMRetrieval, root, seed=5, vision=TINY_VISION_160)
    report = model.load_pretrained(pretrain)
    assert report.missing == [] and report.unexpected == []
    for key in ("vision_encoder.layers.0.blocks.0.attn.relative_position_bias_table",
                "vision_encoder.layers.3.blocks.0.attn.relative_position_bias_table"):
        assert pretrain[key].shape[0] == 25
        assert model.state_dict()[key].shape[0] == 81
        assert torch.allclose(model.state_dict()[key], interpolate_relative_position_bias_table(pretrain[key], 81))


def test_finetuned_checkpoint_round_trips_through_the_reference_layout(root, tmp_path):
    trained = build(CCLMNLVR, root, seed=6)
    path = tmp_path / "nlvr.th"
    exported = ours_to_task_reference(trained.state_dict(), "nlvr", vision_encoder=trained.vision_encoder)
    torch.save({"model": exported, "config": {}}, path)
    fresh = build(CCLMNLVR, root, seed=7)
    report = fresh.load_pretrained(path, is_eval=True)
    assert report.missing == [] and report.unexpected == [] and report.initialised == []
    assert all(k.endswith(("relative_position_index", "attn_mask", "position_ids")) for k in report.dropped)
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_models_are_registered_in_the_factory(root):
    for name, cls in (("cclm_retrieval", CCLMRetrieval), ("cclm_classification", CCLMClassification),
                      ("cclm_nlvr", CCLMNLVR), ("cclm_vqa", CCLMVQA)):
        assert type(create_model(name, tiny_config(), root=root)) is cls


@pytest.mark.parametrize("cls", [CCLMRetrieval, CCLMClassification, CCLMNLVR, CCLMVQA])
def test_golden_reference_pretraining_state_loads_into_every_task_model(golden_dir, cls):
    """The reference's own tiny pre-training state dict (official Swin layout with buffers, tied MLM weights)."""
    config = {"vision_config": "vision/config_swin_tiny_224.json", "text_encoder": "text-encoder",
              "text_num_hidden_layers": 12, "embed_dim": 256, "num_labels": 3, "num_dec_layers": 6}
    torch.manual_seed(0)
    model = cls(config, root=golden_dir)
    state = torch.load(golden_dir / "tiny_state.pt", map_location="cpu", weights_only=True)
    report = model.load_pretrained(golden_dir / "tiny_state.pt")
    assert report.missing == [] and report.unexpected == []
    assert set(report.initialised) == (CLS_HEAD if cls in (CCLMClassification, CCLMNLVR) else set())
    assert {k for k in state if k.endswith(("relative_position_index", "attn_mask"))} <= set(report.dropped)
    own = model.state_dict()
    assert torch.equal(own["vision_encoder.layers.2.blocks.1.attn.relative_position_bias_table"],
                       state["vision_encoder.layers.2.blocks.1.attn.relative_position_bias_table"])
    if cls is CCLMVQA:
        assert torch.equal(own["text_decoder.bert.encoder.layer.5.crossattention.self.query.weight"],
                           state["text_encoder.bert.encoder.layer.11.crossattention.self.query.weight"])
    elif cls is CCLMNLVR:
        assert torch.equal(own["text_encoder.bert.encoder.layer.17.crossattention.self.key.weight"],
                           state["text_encoder.bert.encoder.layer.11.crossattention.self.key.weight"])
    else:
        assert torch.equal(own["text_encoder.bert.encoder.layer.11.output.dense.weight"],
                           state["text_encoder.bert.encoder.layer.11.output.dense.weight"])


@pytest.mark.parametrize("train", [False, True])
def test_task_heads_read_a_cls_computed_alone_in_the_last_layer(root, train):
    """Classification, NLVR and retrieval compute only the CLS in their last layer; it must equal the CLS of the
    full fused sequence (dropout off in both runs, so that train mode, where the text layers pack real tokens, is
    compared too)."""
    ids, atts = text()
    for cls in (CCLMClassification, CCLMNLVR, CCLMRetrieval):
        model = build(cls, root).train(train)
        for module in model.modules():  # no dropout or drop-path: the same numbers in both computations
            if hasattr(module, "p") and isinstance(module.p, float):
                module.p = 0.0
            if hasattr(module, "drop_prob"):
                module.drop_prob = 0.0
        image_embeds, image_atts = model.get_vision_embeds(images())
        if cls is CCLMNLVR:
            memory, memory_atts = [image_embeds, image_embeds.flip(0)], [image_atts, image_atts]
            alone = model.fused_cls(image_embeds, image_atts, image_embeds.flip(0), image_atts, ids, atts)
            full = model.get_cross_embeds(memory, memory_atts, text_ids=ids, text_atts=atts)[:, 0]
        elif cls is CCLMClassification:
            alone = model.get_cross_cls(image_embeds, image_atts, text_atts=atts, text_ids=ids)
            full = model.get_cross_embeds(image_embeds, image_atts, text_ids=ids, text_atts=atts)[:, 0]
        else:
            states = model.get_text_embeds(ids, atts)
            alone = model.get_cross_cls(image_embeds, image_atts, states, atts)
            full = model.get_cross_embeds(image_embeds, image_atts, text_embeds=states, text_atts=atts)[:, 0]
        torch.testing.assert_close(alone, full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="text_embeds or text_ids"):
        model.get_cross_cls(image_embeds, image_atts, text_atts=atts)
