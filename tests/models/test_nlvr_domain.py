"""NLVR domain pre-training model (docs/model.md#nlvr-domain-pre-training): the arrangement draw, the loss against a
hand computation, checkpoint paths (CCLM pre-training -> domain model -> NLVR) and the full-size key manifest."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.factory import create_model
from models.nlvr import (CCLMNLVR, CCLMNLVRDomain, DomainArrangement, domain_negative_weights,
                         draw_domain_arrangement)
from models.weights.finetune import convert_for_task, ours_to_task_reference
from models.weights.pretrain import ours_to_reference
# helpers and fixtures (root, xlmr_large_dir) of the other model tests
from tests.models.test_finetune_models import (CLS_HEAD, build, has_grad, images, root, text,  # noqa: F401
                                               tiny_config, tiny_pretrained_model)
from tests.models.test_manifests import (is_buffer, meta_state, read_manifest, signature,  # noqa: F401
                                         xlmr_large_dir)

TA_HEAD = {"ta_head.weight", "ta_head.bias"}
VISION_PROJ = {"vision_proj.weight", "vision_proj.bias"}
MANIFEST = "cclm-nlvr-domain-pretrain-keys.tsv"


def random_feat(n, dim=16, seed=0):
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def repeated_draws(feat, times, seed=0):
    """``times`` arrangements of one batch from one seeded generator, concatenated (with each row's own index)."""
    g = torch.Generator().manual_seed(seed)
    draws = [draw_domain_arrangement(feat, generator=g) for _ in range(times)]
    own = torch.arange(feat.shape[0]).repeat(times)
    return DomainArrangement(*(torch.cat(parts) for parts in zip(*draws))), own


# --------------------------------------------------------------------------------------------- arrangement

def test_arrangement_rows_follow_their_label():
    arrangement, own = repeated_draws(random_feat(8), times=400)
    left, right, labels = arrangement
    assert left.dtype == right.dtype == labels.dtype == torch.long
    assert set(labels.tolist()) == {0, 1, 2}
    first = labels == 0
    assert torch.equal(left[first], own[first]) and (right[first] != own[first]).all()
    second = labels == 1
    assert torch.equal(right[second], own[second]) and (left[second] != own[second]).all()
    neither = labels == 2
    assert (left[neither] != own[neither]).all() and (right[neither] != own[neither]).all()
    assert (left[neither] != right[neither]).all()  # two distinct negatives


def test_arrangement_label_frequencies_are_a_third_each():
    labels = repeated_draws(random_feat(8), times=400)[0].labels
    frequencies = torch.bincount(labels, minlength=3).float() / labels.numel()
    # 3200 rows: one standard deviation of each frequency is about 0.008
    assert torch.allclose(frequencies, torch.full((3,), 1 / 3), atol=0.04), frequencies


def test_arrangement_is_reproducible_from_the_generator_seed():
    feat = random_feat(6)
    a = draw_domain_arrangement(feat, generator=torch.Generator().manual_seed(5))
    b = draw_domain_arrangement(feat, generator=torch.Generator().manual_seed(5))
    c = draw_domain_arrangement(feat, generator=torch.Generator().manual_seed(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_arrangement_needs_three_images():
    with pytest.raises(ValueError, match="at least 3 images"):
        draw_domain_arrangement(random_feat(2))
    assert draw_domain_arrangement(random_feat(3)).labels.shape == (3,)


def test_negatives_follow_the_similarity_weights():
    """Images 2k and 2k+1 are near-duplicates, all others orthogonal: the first negative is the twin."""
    base = torch.eye(4).repeat_interleave(2, dim=0)
    feat = F.normalize(base + 0.01 * torch.randn(8, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    (left, right, labels), own = repeated_draws(feat, times=200)
    twin = own ^ 1
    first_negative = torch.where(labels == 0, right, left)
    assert (first_negative == twin).float().mean() > 0.99
    # the second negative ("neither" rows) cannot repeat the first: it is one of the six other images
    neither = labels == 2
    assert ((right[neither] != twin[neither]) & (right[neither] != own[neither])).all()


def test_negative_weights_are_the_plain_softmax_without_itms_floor():
    """The reference's domain weights are softmax(sim) with the diagonal zeroed; ITM's + 1e-5 would give the
    dissimilar images (weights ~ e^-14 here) a 1e-5 floor each."""
    sim = torch.tensor([[14.0, 13.0, 0.0], [1.0, 14.0, 2.0], [0.5, 0.25, 14.0]])
    rows = [[math.exp(v) for v in row] for row in sim.tolist()]
    expected = [[0.0 if i == j else v / sum(row) for j, v in enumerate(row)] for i, row in enumerate(rows)]
    torch.testing.assert_close(domain_negative_weights(sim), torch.tensor(expected), rtol=1e-6, atol=1e-12)


def test_arrangement_reads_no_tensor_value_on_the_host(monkeypatch):
    """No .item() / .tolist() / bool() / int(): the draw stays on the device and in one compiled graph."""
    def forbidden(*args, **kwargs):
        raise AssertionError("host read of a tensor value")

    feat = random_feat(5)
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    arrangement = draw_domain_arrangement(feat, generator=torch.Generator().manual_seed(0))
    monkeypatch.undo()
    assert arrangement.left.shape == (5,)


# --------------------------------------------------------------------------------------------- model

def test_domain_forward_backward(root):
    model = build(CCLMNLVRDomain, root)
    ids, atts = text()
    torch.manual_seed(0)
    losses = model(images(), ids, atts)
    assert set(losses) == {"loss_ta"} and torch.isfinite(losses["loss_ta"])
    losses["loss_ta"].backward()
    for prefix in ("ta_head", "vision_encoder.patch_embed", "text_encoder.bert.embeddings.word_embeddings",
                   "text_encoder.bert.encoder.layer.3.crossattention.self.query",
                   "text_encoder.bert.encoder.layer.5.output.dense"):
        assert has_grad(model, prefix), prefix
    assert all(not p.requires_grad and p.grad is None for p in model.vision_proj.parameters())
    assert set(model.init_params) == TA_HEAD and model.task == "nlvr_domain"
    layers = model.text_encoder.bert.encoder.layer
    assert len(layers) == 6 and layers[2].crossattention.self.key is layers[3].crossattention.self.key


def test_injected_arrangement_gives_the_hand_computed_loss(root):
    model = build(CCLMNLVRDomain, root).eval()
    ids, atts = text()
    image = images()
    arrangement = DomainArrangement(left=torch.tensor([0, 2, 3, 1]), right=torch.tensor([3, 1, 0, 2]),
                                    labels=torch.tensor([0, 1, 2, 2]))
    with torch.no_grad():
        loss = model(image, ids, atts, arrangement=arrangement)["loss_ta"]
        terms = []
        for b in range(4):
            left = model.vision_encoder(image[int(arrangement.left[b])][None])
            right = model.vision_encoder(image[int(arrangement.right[b])][None])
            ones = torch.ones(left.shape[:2], dtype=torch.long)
            fused = model.get_cross_embeds([left, right], [ones, ones], text_ids=ids[b:b + 1], text_atts=atts[b:b + 1])
            logits = fused[:, 0] @ model.ta_head.weight.t() + model.ta_head.bias
            terms.append(-F.log_softmax(logits[0], dim=0)[int(arrangement.labels[b])])
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_drawn_arrangement_uses_the_global_rng_and_the_projected_features(root, monkeypatch):
    import models.nlvr as nlvr_module

    model = build(CCLMNLVRDomain, root).eval()
    ids, atts = text()
    image = images()
    seen = []

    temps = []

    def spy(feat, temp=0.07, generator=None):
        seen.append(feat)
        temps.append(temp)
        return draw_domain_arrangement(feat, temp, generator)

    monkeypatch.setattr(nlvr_module, "draw_domain_arrangement", spy)
    with torch.no_grad():
        torch.manual_seed(3)
        first = model(image, ids, atts)["loss_ta"]
        torch.manual_seed(3)
        second = model(image, ids, atts)["loss_ta"]
        expected_feat = F.normalize(model.vision_proj(model.vision_encoder(image)[:, 0]), dim=-1)
    assert first.item() == second.item()
    assert torch.allclose(seen[0], expected_feat, atol=1e-6) and not seen[0].requires_grad
    warmer = CCLMNLVRDomain(tiny_config(negative_temp=0.5), root=root).eval()  # the config key reaches the draw
    with torch.no_grad():
        warmer(image, ids, atts)
    assert temps == [0.07, 0.07, 0.5]
    with pytest.raises(ValueError, match="negative_temp must be positive"):
        CCLMNLVRDomain(tiny_config(negative_temp=0.0), root=root)


def test_injected_arrangement_is_checked(root):
    model = build(CCLMNLVRDomain, root)
    ids, atts = text()
    bad = DomainArrangement(torch.tensor([0, 1, 2, 4]), torch.tensor([1, 2, 3, 0]), torch.tensor([0, 1, 2, 2]))
    with pytest.raises(ValueError, match="left"):
        model(images(), ids, atts, arrangement=bad)
    bad = DomainArrangement(torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 3, 0]), torch.tensor([0, 1, 3, 2]))
    with pytest.raises(ValueError, match="labels"):
        model(images(), ids, atts, arrangement=bad)


def test_domain_model_is_registered_in_the_factory(root):
    assert type(create_model("cclm_nlvr_domain", tiny_config(), root=root)) is CCLMNLVRDomain


# --------------------------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def pretrained(root):
    return tiny_pretrained_model(root)


@pytest.mark.parametrize("layout", ["ours", "reference"])
def test_pretraining_checkpoint_loads_into_the_domain_model(root, pretrained, layout):
    state = pretrained.state_dict() if layout == "ours" else ours_to_reference(pretrained.state_dict())
    source = pretrained.state_dict()
    model = build(CCLMNLVRDomain, root, seed=5)
    report = model.load_pretrained(state)
    assert report.missing == [] and report.unexpected == []
    assert set(report.initialised) == TA_HEAD
    assert not set(report.dropped) & VISION_PROJ
    assert {"temp", "text_proj.weight", "itm_head.0.weight", "bbox_head.0.weight"} <= set(report.dropped)
    own = model.state_dict()
    for key in VISION_PROJ | {"vision_encoder.patch_embed.proj.weight",
                              "text_encoder.bert.embeddings.word_embeddings.weight"}:
        assert torch.equal(own[key], source[key]), key
    src = "text_encoder.bert.encoder.layer.{}.{}"
    names = [n.split(".", 5)[-1] for n in source if n.startswith("text_encoder.bert.encoder.layer.2.")]
    assert any(n.startswith("crossattention.self.key") for n in names)
    for old, new in ((0, (0,)), (1, (1,)), (2, (2, 3)), (3, (4, 5))):
        for name in names if old >= 2 else [n for n in names if not n.startswith("crossattention.")]:
            for layer in new:
                assert torch.equal(own[src.format(layer, name)], source[src.format(old, name)]), (layer, name)


def test_domain_checkpoint_loads_into_nlvr(root):
    domain = build(CCLMNLVRDomain, root, seed=6)
    with torch.no_grad():  # distinct values in every text layer, so that a wrong copy shows
        for name, param in domain.named_parameters():
            if name.endswith("bias"):
                param.uniform_(-0.1, 0.1)
    model = build(CCLMNLVR, root, seed=7)
    report = model.load_pretrained(domain.state_dict())
    assert report.missing == [] and report.unexpected == []
    assert set(report.initialised) == CLS_HEAD
    assert set(report.dropped) == TA_HEAD | VISION_PROJ
    assert "NLVR domain pre-training" in report.dropped["ta_head.weight"]
    assert "NLVR domain pre-training" in report.dropped["vision_proj.weight"]
    own = model.state_dict()
    for key, value in domain.state_dict().items():
        if key.startswith(("text_encoder.", "vision_encoder.")):
            assert torch.equal(own[key], value), key


def test_domain_checkpoint_round_trips_through_the_reference_layout(root):
    trained = build(CCLMNLVRDomain, root, seed=8)
    state = ours_to_task_reference(trained.state_dict(), "nlvr_domain", vision_encoder=trained.vision_encoder)
    fresh = build(CCLMNLVRDomain, root, seed=9)
    report = fresh.load_pretrained(state)
    assert report.missing == [] and report.unexpected == [] and report.initialised == []
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert not fresh.vision_proj.weight.requires_grad  # loading keeps the projection frozen


# --------------------------------------------------------------------------------------------- full size

@pytest.fixture(scope="module")
def full_size_domain_model(xlmr_large_dir):  # noqa: F811
    config = {"vision_config": "swin_base_224", "image_res": 224, "text_encoder": str(xlmr_large_dir),
              "text_num_hidden_layers": 12, "embed_dim": 256}
    with torch.device("meta"):
        return CCLMNLVRDomain(config)


def test_full_size_domain_model_matches_the_reference_manifest(shared_docs, full_size_domain_model):
    manifest = read_manifest(shared_docs / MANIFEST)
    model = full_size_domain_model
    exported = signature(ours_to_task_reference(model.state_dict(), "nlvr_domain",
                                                vision_encoder=model.vision_encoder))
    assert sorted(set(manifest) - set(exported)) == []
    assert sorted(set(exported) - set(manifest)) == []
    assert {k: (exported[k], manifest[k]) for k in manifest if exported[k] != manifest[k]} == {}


def test_pretraining_manifest_gives_every_domain_key_but_ta_head(shared_docs, full_size_domain_model):
    pretrain = read_manifest(shared_docs / "cclm-pretrain-keys.tsv")
    converted, report = convert_for_task(meta_state(pretrain), "nlvr_domain", window_size=7, num_fusion_pairs=6)
    own = signature(full_size_domain_model.state_dict())
    assert signature(converted) == {k: v for k, v in own.items() if k not in TA_HEAD}
    assert not set(report.dropped) & VISION_PROJ


def test_domain_manifest_loads_into_the_domain_model_by_renames(shared_docs, full_size_domain_model):
    domain = read_manifest(shared_docs / MANIFEST)
    for is_eval in (True, False):
        converted, report = convert_for_task(meta_state(domain), "nlvr_domain", window_size=7, is_eval=is_eval,
                                             num_fusion_pairs=6)
        assert signature(converted) == signature(full_size_domain_model.state_dict())
        assert set(report.dropped) == {k for k in domain if is_buffer(k)}
