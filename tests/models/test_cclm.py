"""Pre-training model on tiny offline configs: the three batch kinds forward and backward; full size on meta."""
import pytest
import torch
from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

from models.cclm import CCLMPretrain
from models.factory import create_model
from models.losses import HardNegatives
from models.vision import SwinVisionEncoder
from models.weights.pretrain import ours_to_reference
from models.weights.swin import swin_ours_to_reference

WIDTH, VOCAB, B, L = 64, 40, 4, 9
TINY_VISION = {"image_res": 64, "window_size": 2, "embed_dim": 8, "depths": [1, 1, 2, 1], "num_heads": [1, 1, 2, 2],
               "vision_width": WIDTH}
NUM_PATCHES = (64 // 32) ** 2


def write_tiny_xlmr(path, num_layers=4, hidden=WIDTH, vocab=VOCAB, heads=4, max_positions=40):
    XLMRobertaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=heads,
                     intermediate_size=4 * hidden, max_position_embeddings=max_positions, type_vocab_size=1,
                     pad_token_id=1, layer_norm_eps=1e-5).save_pretrained(path)
    return path


def tiny_config(tmp_path, **overrides):
    config = {"vision_config": dict(TINY_VISION), "image_res": 64, "text_encoder": "xlmr",
              "text_num_hidden_layers": 4, "embed_dim": 16, "temp": 0.07}
    write_tiny_xlmr(tmp_path / "xlmr")
    config.update(overrides)
    return config


@pytest.fixture
def model(tmp_path):
    torch.manual_seed(0)
    return CCLMPretrain(tiny_config(tmp_path), root=tmp_path)


def text_batch(seed, suffix=""):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB - 1, (B, L), generator=g)
    ids[:, 0] = 0
    atts = torch.ones_like(ids)
    atts[2:, 6:] = 0
    ids[atts == 0] = 1
    masked = ids.clone()
    masked_pos = torch.tensor([[1, 3], [2, 0], [4, 5], [1, 0]])
    masked_ids = torch.gather(ids, 1, masked_pos)
    masked_ids[[1, 3], 1] = -100
    masked.scatter_(1, masked_pos, VOCAB - 1)
    return {f"text_ids{suffix}": ids, f"text_atts{suffix}": atts, f"text_ids_masked{suffix}": masked,
            f"masked_pos{suffix}": masked_pos, f"masked_ids{suffix}": masked_ids}


def image_batch(n=B):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def region_batch():
    atts = torch.zeros(B, 1 + NUM_PATCHES, dtype=torch.long)
    atts[:, 0] = 1
    atts[:, 1:3] = 1
    atts[0] = 1  # a whole-image caption
    return {"image": image_batch(2), "idx_to_group_img": torch.tensor([0, 0, 1, 1]), "image_atts": atts,
            "target_bbox": torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.3, 0.3, 0.2, 0.4], [0.6, 0.5, 0.4, 0.4],
                                         [0.5, 0.7, 0.3, 0.2]]),
            "is_image": torch.tensor([1.0, 0.0, 0.0, 0.0]), "ret_bbox_loss": True, **text_batch(5)}


def grads_of(model, prefix):
    return [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]


def test_image_text_batch_with_two_captions(model):
    losses = model(image=image_batch(), **text_batch(1), **text_batch(2, "_2"))
    assert set(losses) == {"loss_itc", "loss_itm", "loss_mlm", "loss_ttc"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(g is not None for g in grads_of(model, "vision_encoder.patch_embed"))
    assert all(g is None for g in grads_of(model, "bbox_head"))
    assert model.text_encoder.bert.encoder.layer[3].crossattention.self.key.weight.grad.abs().sum() > 0


def test_image_text_batch_without_second_caption_has_no_ttc(model):
    losses = model(image=image_batch(), **text_batch(1))
    assert set(losses) == {"loss_itc", "loss_itm", "loss_mlm"}


def test_parallel_text_batch(model):
    losses = model(image=None, **text_batch(1), **text_batch(2, "_2"), text_atts_masked=None)
    assert set(losses) == {"loss_ttc", "loss_ttm", "loss_mlm"}
    sum(losses.values()).backward()
    assert all(g is None for g in grads_of(model, "vision_encoder"))
    assert all(g is None for g in grads_of(model, "vision_proj"))
    assert model.itm_head[0].weight.grad.abs().sum() > 0


def test_region_batch(model):
    losses = model(**region_batch())
    assert set(losses) == {"loss_itc", "loss_itm", "loss_mlm", "loss_bbox", "loss_giou"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.bbox_head[3].weight.grad.abs().sum() > 0


def test_injected_hard_negatives_replace_sampling(model):
    model.eval()
    batch = dict(image=image_batch(), **text_batch(1))
    first = HardNegatives(torch.tensor([1, 0, 3, 2]), torch.tensor([2, 3, 0, 1]))
    second = HardNegatives(torch.tensor([3, 2, 1, 0]), torch.tensor([1, 0, 3, 2]))
    a1 = model(**batch, hard_negatives=first)["loss_itm"]
    a2 = model(**batch, hard_negatives=first)["loss_itm"]
    b = model(**batch, hard_negatives=second)["loss_itm"]
    assert a1.item() == a2.item() and a1.item() != b.item()
    with pytest.raises(ValueError, match="x_for_y"):
        model(**batch, hard_negatives=HardNegatives(torch.tensor([1, 0, 3, 9]), torch.tensor([2, 3, 0, 1])))


def test_forward_clamps_the_temperature_in_place(model):
    with torch.no_grad():
        model.temp.fill_(0.0001)
    model(image=image_batch(), **text_batch(1))
    assert model.temp.item() == pytest.approx(0.001)
    with torch.no_grad():
        model.temp.fill_(3.0)
    model(image=None, **text_batch(1), **text_batch(2, "_2"))
    assert model.temp.item() == pytest.approx(0.5)


def test_init_params_are_the_new_parameters(model):
    names = set(model.init_params)
    params = dict(model.named_parameters())
    assert names <= set(params)
    assert {"temp", "text_proj.weight", "vision_proj.bias", "itm_head.3.weight", "bbox_head.1.weight"} <= names
    cross = {n for n in params if ".crossattention." in n}
    assert cross and cross <= names
    assert not any(n.startswith("vision_encoder.") or ".attention.self." in n for n in names)


def test_pretraining_from_scratch_loads_xlmr_and_swin_files(tmp_path):
    write_tiny_xlmr(tmp_path / "xlmr", num_layers=8)
    hf = XLMRobertaForMaskedLM(XLMRobertaConfig.from_pretrained(tmp_path / "xlmr"))
    hf.save_pretrained(tmp_path / "xlmr")
    swin = SwinVisionEncoder(TINY_VISION)
    torch.save({"model": swin_ours_to_reference(swin.state_dict())}, tmp_path / "swin.pth")
    config = {"vision_config": dict(TINY_VISION, ckpt="swin.pth"), "image_res": 64, "text_encoder": "xlmr",
              "text_num_hidden_layers": 4, "load_text_params": True, "load_vision_params": True}
    model = CCLMPretrain(config, root=tmp_path)
    torch.testing.assert_close(model.text_encoder.bert.encoder.layer[2].output.dense.weight,
                               hf.roberta.encoder.layer[5].output.dense.weight)
    torch.testing.assert_close(model.vision_encoder.layers[1].downsample.reduction.weight,
                               swin.layers[1].downsample.reduction.weight)
    assert {n for n in model.init_params if n.startswith("text_encoder.")} == \
        {n for n, _ in model.named_parameters() if ".crossattention." in n}


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="itc_gather"):
        CCLMPretrain(tiny_config(tmp_path, itc_gather="everything"), root=tmp_path)
    with pytest.raises(ValueError, match="image_res"):
        CCLMPretrain(tiny_config(tmp_path, image_res=224), root=tmp_path)
    config = tiny_config(tmp_path)
    del config["text_encoder"]
    with pytest.raises(KeyError, match="text_encoder"):
        CCLMPretrain(config, root=tmp_path)


@pytest.mark.parametrize("key,value", [("use_tlm", True), ("use_one_cl_proj_only", True), ("use_clip_vit", True),
                                       ("use_swin", False), ("mask_whole_word", True)])
def test_reference_switches_without_an_implementation_are_errors(tmp_path, key, value):
    with pytest.raises(ValueError, match=rf"{key}={value!r} is not supported"):
        CCLMPretrain(tiny_config(tmp_path, **{key: value}), root=tmp_path)


def test_reference_switches_at_their_defaults_are_accepted(tmp_path):
    defaults = {"use_tlm": False, "use_one_cl_proj_only": False, "use_clip_vit": False, "use_swin": True,
                "mask_whole_word": False}
    CCLMPretrain(tiny_config(tmp_path, **defaults), root=tmp_path)


@pytest.mark.parametrize("calc_image_bbox_loss", [False, True])
def test_calc_image_bbox_loss_counts_whole_image_captions_in_the_box_losses(tmp_path, monkeypatch,
                                                                            calc_image_bbox_loss):
    import models.cclm as cclm_module

    seen = []
    real = cclm_module.bbox_losses
    monkeypatch.setattr(cclm_module, "bbox_losses", lambda pred, target, is_image: seen.append(is_image) or
                        real(pred, target, is_image))
    torch.manual_seed(0)
    model = CCLMPretrain(tiny_config(tmp_path, calc_image_bbox_loss=calc_image_bbox_loss), root=tmp_path)
    batch = region_batch()
    model(**batch)
    if calc_image_bbox_loss:
        assert seen == [None]  # every item counts (bbox_losses' contract, tested in test_losses)
    else:
        assert torch.equal(seen[0], batch["is_image"])


def test_factory_builds_registered_models(tmp_path):
    model = create_model("cclm_pretrain", tiny_config(tmp_path, itc_gather="full"), root=tmp_path)
    assert isinstance(model, CCLMPretrain) and model.itc_gather == "full"
    with pytest.raises(KeyError, match="cclm_pretrain"):
        create_model("cclm_unknown", {})


def _read_manifest(path):
    rows = [line.rstrip("\n").split("\t") for line in path.read_text().splitlines()[1:] if line.strip()]
    return {key: (shape, dtype) for key, shape, dtype in rows}


def _shape_string(tensor):
    return "scalar" if tensor.dim() == 0 else "x".join(str(s) for s in tensor.shape)


def test_full_size_model_matches_the_reference_manifest(tmp_path, shared_docs):
    """XLM-R-large + Swin-B 224 on the meta device: keys, shapes and dtypes equal the released layout."""
    write_tiny_xlmr(tmp_path / "xlmr-large", num_layers=24, hidden=1024, vocab=250002, heads=16, max_positions=514)
    with torch.device("meta"):
        model = CCLMPretrain({"vision_config": "swin_base_224", "image_res": 224, "text_encoder": "xlmr-large",
                              "text_num_hidden_layers": 12, "embed_dim": 256, "temp": 0.07}, root=tmp_path)
    ours = ours_to_reference(model.state_dict(), vision_encoder=model.vision_encoder)
    manifest = _read_manifest(shared_docs / "cclm-pretrain-keys.tsv")
    assert sorted(set(manifest) - set(ours)) == []
    assert sorted(set(ours) - set(manifest)) == []
    wrong = {k: (manifest[k], _shape_string(v), str(v.dtype)) for k, v in ours.items()
             if (_shape_string(v), "torch." + manifest[k][1]) != (manifest[k][0], str(v.dtype))}
    assert wrong == {}


def test_grad_checkpointing_switch_keeps_losses_and_gradients(model):
    """run.grad_checkpointing goes through CCLMBase.set_grad_checkpointing: same numbers, encoders switched on."""
    batch = dict(image=image_batch(), **text_batch(1), **text_batch(2, "_2"))
    negatives = HardNegatives(torch.tensor([1, 0, 3, 2]), torch.tensor([2, 3, 0, 1]))

    def run():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        losses = model(**batch, hard_negatives=negatives)
        sum(losses.values()).backward()
        return {k: v.detach() for k, v in losses.items()}, {n: p.grad.clone() for n, p in model.named_parameters()
                                                            if p.grad is not None}

    model.train()
    plain_losses, plain_grads = run()
    model.set_grad_checkpointing(True)
    assert all(stage.grad_checkpointing for stage in model.vision_encoder.layers)
    assert all(layer.gradient_checkpointing for layer in model.text_encoder.bert.encoder.layer)
    ckpt_losses, ckpt_grads = run()
    for key, value in plain_losses.items():
        torch.testing.assert_close(ckpt_losses[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert ckpt_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


# ------------------------------------------------------------------ fast path (see bench/RESULTS.md)

NEGATIVES = HardNegatives(torch.tensor([1, 0, 3, 2]), torch.tensor([2, 3, 0, 1]))


def separate_passes(model, memory, memory_atts, texts, text_atts, masked, masked_atts, masked_memory,
                    masked_memory_atts, batch):
    """ITM and MLM losses the reference's way: one fusion call for the positives, one for the negatives, and a
    full 12-layer pass of the masked text, from the model's public pieces."""
    from models.losses import matching_loss, mlm_loss

    states = model.get_text_embeds(texts, text_atts)
    x, y = NEGATIVES
    pos = model.get_cross_embeds(memory, memory_atts, text_embeds=states, text_atts=text_atts)[:, 0]
    neg = model.get_cross_embeds(torch.cat([memory[x], memory]), torch.cat([memory_atts[x], memory_atts]),
                                 text_embeds=torch.cat([states, states[y]]),
                                 text_atts=torch.cat([text_atts, text_atts[y]]))[:, 0]
    logits = model.itm_head(torch.cat([pos, neg]))
    hidden = model.text_encoder(masked, masked_atts, encoder_hidden_states=masked_memory,
                                encoder_attention_mask=masked_memory_atts, mode="multi_modal")
    return {"itm": matching_loss(logits[:B], logits[B:]),
            "mlm": mlm_loss(model.text_encoder.mlm_logits(hidden, batch["masked_pos"]), batch["masked_ids"]),
            "states": states}


def test_one_fusion_pass_equals_separate_passes_for_images(model):
    model.eval()
    batch = dict(image=image_batch(), **text_batch(1), **text_batch(2, "_2"))
    losses = model(**batch, hard_negatives=NEGATIVES)
    with torch.no_grad():
        image, image_atts = model.get_vision_embeds(batch["image"])
        expected = separate_passes(model, image, image_atts, batch["text_ids"], batch["text_atts"],
                                   batch["text_ids_masked"], batch["text_atts"], image, image_atts, batch)
    torch.testing.assert_close(losses["loss_itm"], expected["itm"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["loss_mlm"], expected["mlm"], rtol=1e-5, atol=1e-6)


def test_one_fusion_pass_equals_separate_passes_for_parallel_text(model):
    model.eval()
    batch = dict(image=None, **text_batch(1), **text_batch(2, "_2"))
    losses = model(**batch, hard_negatives=NEGATIVES)
    with torch.no_grad():
        first = model.get_text_embeds(batch["text_ids"], batch["text_atts"])
        second = model.get_text_embeds(batch["text_ids_2"], batch["text_atts_2"])
        expected = separate_passes(model, first, batch["text_atts"], batch["text_ids_2"], batch["text_atts_2"],
                                   batch["text_ids_masked"], batch["text_atts"], second, batch["text_atts_2"], batch)
    torch.testing.assert_close(losses["loss_ttm"], expected["itm"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["loss_mlm"], expected["mlm"], rtol=1e-5, atol=1e-6)


def test_one_fusion_pass_equals_separate_passes_for_regions(model):
    from models.heads import predict_box
    from models.losses import bbox_losses

    model.eval()
    batch = region_batch()
    losses = model(**batch, hard_negatives=NEGATIVES)
    with torch.no_grad():
        region, full_rows = model.vision_encoder(batch["image"], idx_to_group_img=batch["idx_to_group_img"],
                                                 image_atts=batch["image_atts"])
        expected = separate_passes(model, region, batch["image_atts"], batch["text_ids"], batch["text_atts"],
                                   batch["text_ids_masked"], batch["text_atts"], region, batch["image_atts"], batch)
        fused = model.get_cross_embeds(full_rows, torch.ones(full_rows.shape[:2]), text_embeds=expected["states"],
                                       text_atts=batch["text_atts"])[:, 0]
        boxes = predict_box(model.bbox_head, fused)
        l1, giou = bbox_losses(boxes, batch["target_bbox"], batch["is_image"])
    torch.testing.assert_close(losses["loss_itm"], expected["itm"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["loss_mlm"], expected["mlm"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["loss_bbox"], l1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["loss_giou"], giou, rtol=1e-5, atol=1e-6)


def _backward_node_names(tensor) -> set[str]:
    names, stack, seen = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("kind", ["image", "para", "region"])
def test_training_graph_has_no_advanced_indexing_backward(model, kind):
    """Advanced indexing with repeated rows (several texts per image, an ITM row used three times) is summed in its
    backward with atomics on multi-threaded CPUs, in a varying order: training then differs bit-wise between runs
    and an exact resume fails. The pre-training graph must gather rows with index_select instead."""
    batch = {"image": dict(image=image_batch(), **text_batch(1), **text_batch(2, "_2")),
             "para": dict(image=None, **text_batch(1), **text_batch(2, "_2")),
             "region": region_batch()}[kind]
    losses = model.train()(**batch)
    assert "IndexBackward0" not in _backward_node_names(sum(losses.values()))


@pytest.mark.parametrize("kind", ["image", "para", "region"])
def test_training_forward_compiles_to_one_graph(model, kind):
    """Under run.compile a graph break splits the step (and a host read of a tensor value, which is what breaks it,
    would also stall a GPU at every step): input checks must not read values while compiling."""
    batch = {"image": dict(image=image_batch(), **text_batch(1), **text_batch(2, "_2")),
             "para": dict(image=None, **text_batch(1), **text_batch(2, "_2")),
             "region": region_batch()}[kind]
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model.train())(**batch)
    reasons = [str(r.reason).splitlines()[0] for r in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
