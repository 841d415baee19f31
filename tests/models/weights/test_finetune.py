"""Pure state-dict filters of models/weights/finetune.py on small hand-made state dicts (values mark the source)."""
import pytest
import torch

from models.weights.finetune import (ConversionReport, checkpoint_task, convert_for_task, detect_layout,
                                     duplicate_fusion_layers, ours_to_task_reference, pretrain_to_task_reference,
                                     task_reference_to_ours)

LAYERS, FUSION = 4, 2
SUBLAYER = ("attention.self.query.weight", "attention.output.LayerNorm.bias", "intermediate.dense.weight",
            "output.dense.bias")
CROSS = ("crossattention.self.key.weight", "crossattention.self.value.bias", "crossattention.output.dense.weight")
SWIN = {  # reference/official Swin layout (window 2: 9-row tables), one block per stage, merges after stages 0-2
    "vision_encoder.patch_embed.proj.weight": (8, 3, 4, 4),
    "vision_encoder.layers.0.blocks.0.attn.relative_position_bias_table": (9, 1),
    "vision_encoder.layers.0.blocks.0.attn.relative_position_index": (4, 4),
    "vision_encoder.layers.0.blocks.1.attn_mask": (16, 4, 4),
    "vision_encoder.layers.0.downsample.reduction.weight": (16, 32),
    "vision_encoder.layers.1.downsample.norm.weight": (64,),
    "vision_encoder.norm.weight": (64,),
}


def _value(counter):
    counter[0] += 1
    return torch.tensor([float(counter[0])])


def reference_pretrain_state(num_layers=LAYERS, fusion=FUSION):
    """A miniature reference pre-training state dict; every text tensor holds a distinct number."""
    counter = [0]
    state = {k: torch.zeros(shape) for k, shape in SWIN.items()}
    state["text_encoder.bert.embeddings.position_ids"] = torch.arange(10).unsqueeze(0)
    state["text_encoder.bert.embeddings.word_embeddings.weight"] = _value(counter)
    for k in range(num_layers):
        for name in SUBLAYER + (CROSS if k >= fusion else ()):
            state[f"text_encoder.bert.encoder.layer.{k}.{name}"] = _value(counter)
    for name in ("cls.predictions.bias", "cls.predictions.transform.dense.weight", "cls.predictions.decoder.weight"):
        state[f"text_encoder.{name}"] = _value(counter)
    for name in ("text_proj.weight", "vision_proj.bias", "temp", "itm_head.0.weight", "itm_head.3.bias",
                 "bbox_head.0.weight", "bbox_head.3.bias"):
        state[name] = _value(counter)
    return state


SWIN_BUFFERS = {"vision_encoder.layers.0.blocks.0.attn.relative_position_index",
                "vision_encoder.layers.0.blocks.1.attn_mask"}
PRETRAIN_ONLY = {"text_encoder.cls.predictions.bias", "text_encoder.cls.predictions.transform.dense.weight",
                 "text_encoder.cls.predictions.decoder.weight", "bbox_head.0.weight", "bbox_head.3.bias"}
CONTRASTIVE = {"text_proj.weight", "vision_proj.bias", "temp", "itm_head.0.weight", "itm_head.3.bias"}


# --------------------------------------------------------------------------------------------- layout detection

def test_detect_layout():
    pretrain = reference_pretrain_state()
    assert detect_layout(pretrain) == "reference_pretrain"
    finetune, _ = pretrain_to_task_reference(pretrain, "retrieval")
    assert detect_layout(finetune) == "reference_finetune"
    ours, _ = task_reference_to_ours(finetune, "retrieval")
    assert detect_layout(ours) == "ours_finetune"
    ours_pretrain = {k: v for k, v in ours.items() if not k.startswith("text_encoder.bert.")}
    ours_pretrain.update({k: v for k, v in pretrain.items()
                          if k.startswith(("text_encoder.bert.", "text_encoder.cls."))})
    assert detect_layout(ours_pretrain) == "ours_pretrain"


@pytest.mark.parametrize("state, message", [
    ({"vision_encoder.norm.weight": 0}, "no text encoder keys"),
    ({"text_encoder.bert.embeddings.x": 0, "text_encoder.encoder.layer.0.x": 0}, "mixes"),
    ({"text_encoder.bert.embeddings.x": 0}, "no vision_encoder"),
    ({"text_encoder.encoder.layer.0.x": 0, "vision_encoder.layers.1.downsample.norm.weight": 0}, "timm-layout"),
])
def test_detect_layout_errors_name_the_problem(state, message):
    with pytest.raises(ValueError, match=message):
        detect_layout(state)


def test_checkpoint_task_names_the_model_a_checkpoint_was_made_for():
    pretrain = reference_pretrain_state()
    assert checkpoint_task(pretrain) == "pretrain"
    for task in ("retrieval", "classification", "nlvr", "nlvr_domain", "vqa"):
        reference, _ = pretrain_to_task_reference(pretrain, task, num_fusion_pairs=LAYERS - FUSION)
        if task in ("classification", "nlvr"):
            reference["cls_head.3.bias"] = torch.zeros(2)
        if task == "nlvr_domain":
            reference.update({"ta_head.weight": torch.zeros(3, 2), "vision_proj.bias": torch.zeros(2)})
        ours, _ = task_reference_to_ours(reference, task)
        assert checkpoint_task(reference) == task and checkpoint_task(ours) == task, task
    assert checkpoint_task({"patch_embed.proj.weight": torch.zeros(1)}) == ""  # a bare Swin file


# --------------------------------------------------------------------------------------------- reference rules

@pytest.mark.parametrize("task", ["retrieval", "classification"])
def test_pretrain_to_retrieval_and_classification_strip_bert_and_drop_with_reasons(task):
    source = reference_pretrain_state()
    out, report = pretrain_to_task_reference(source, task)
    expected_drops = SWIN_BUFFERS | PRETRAIN_ONLY | (set() if task == "retrieval" else CONTRASTIVE)
    assert set(report.dropped) == expected_drops
    assert all(report.dropped[k] for k in expected_drops)  # every drop says why
    assert "MLM head" in report.dropped["text_encoder.cls.predictions.bias"]
    for key, value in source.items():
        if key.startswith("text_encoder.bert."):
            assert out["text_encoder." + key[len("text_encoder.bert."):]] is value
        elif key not in expected_drops:
            assert out[key] is value
    assert not any(k.startswith("text_encoder.bert.") for k in out)
    assert len(out) == len(source) - len(expected_drops)


def test_pretrain_to_nlvr_duplicates_fusion_layers_into_pairs():
    source = reference_pretrain_state()
    out, report = pretrain_to_task_reference(source, "nlvr")
    assert set(report.dropped) == SWIN_BUFFERS | PRETRAIN_ONLY | CONTRASTIVE
    src = "text_encoder.bert.encoder.layer.{}.{}"
    dst = "text_encoder.encoder.layer.{}.{}"
    for name in SUBLAYER:
        for k in range(FUSION):
            assert out[dst.format(k, name)] is source[src.format(k, name)]
    # pre-trained fusion layer 2 -> layers 2 and 3; layer 3 -> layers 4 and 5
    for old, new in ((2, (2, 3)), (3, (4, 5))):
        for name in SUBLAYER + CROSS:
            for layer in new:
                assert out[dst.format(layer, name)] is source[src.format(old, name)]
    layers = {int(k.split(".")[3]) for k in out if k.startswith("text_encoder.encoder.layer.")}
    assert layers == set(range(6))
    assert not any(".crossattention." in k for k in out if k.startswith(("text_encoder.encoder.layer.0.",
                                                                         "text_encoder.encoder.layer.1.")))


def test_nlvr_strips_roberta_before_bert():
    state = {"text_encoder.roberta.encoder.layer.0.crossattention.self.key.weight": torch.zeros(1),
             "vision_encoder.norm.weight": torch.zeros(1)}
    out, _ = pretrain_to_task_reference(state, "nlvr")
    assert set(out) == {"text_encoder.encoder.layer.0.crossattention.self.key.weight",
                        "text_encoder.encoder.layer.1.crossattention.self.key.weight", "vision_encoder.norm.weight"}


def test_duplicate_fusion_layers_needs_cross_attention_keys():
    with pytest.raises(ValueError, match="crossattention"):
        duplicate_fusion_layers({"text_encoder.encoder.layer.0.output.dense.bias": torch.zeros(1)})


def test_nlvr_rejects_a_layer_count_it_cannot_pair():
    state, _ = pretrain_to_task_reference(reference_pretrain_state(num_layers=5), "retrieval")  # 3 fusion layers
    with pytest.raises(ValueError, match="3 fusion layers"):
        convert_for_task(state, "nlvr", num_fusion_pairs=2)


def test_pretrain_to_vqa_builds_the_decoder_from_fusion_layers():
    source = reference_pretrain_state()
    out, report = pretrain_to_task_reference(source, "vqa", num_dec_layers=2)
    assert set(report.dropped) == SWIN_BUFFERS | CONTRASTIVE | {"bbox_head.0.weight", "bbox_head.3.bias"}
    src = "text_encoder.bert.encoder.layer.{}.{}"
    for k in range(LAYERS):  # the encoder keeps every layer, bare names
        for name in SUBLAYER:
            assert out[f"text_encoder.encoder.layer.{k}.{name}"] is source[src.format(k, name)]
    for i in range(LAYERS - FUSION):  # decoder layer i <- fusion layer 2+i, cross-attention included
        for name in SUBLAYER + CROSS:
            assert out[f"text_decoder.bert.encoder.layer.{i}.{name}"] is source[src.format(FUSION + i, name)]
    for name in ("embeddings.word_embeddings.weight", "embeddings.position_ids"):
        assert out[f"text_decoder.bert.{name}"] is source[f"text_encoder.bert.{name}"]
        assert out[f"text_encoder.{name}"] is source[f"text_encoder.bert.{name}"]
    for name in ("cls.predictions.bias", "cls.predictions.decoder.weight"):
        assert out[f"text_decoder.{name}"] is source[f"text_encoder.{name}"]
    assert not any(k.startswith(("text_encoder.bert.", "text_encoder.cls.")) for k in out)
    decoder_layers = {int(k.split(".")[4]) for k in out if k.startswith("text_decoder.bert.encoder.layer.")}
    assert decoder_layers == {0, 1}


def test_vqa_decoder_depth_must_match_the_fusion_layers():
    with pytest.raises(ValueError, match="decoder has 3 layers but the checkpoint has 2 fusion layers"):
        pretrain_to_task_reference(reference_pretrain_state(), "vqa", num_dec_layers=3)


def test_bias_tables_are_resized_to_the_target_window():
    source = reference_pretrain_state()
    key = "vision_encoder.layers.0.blocks.0.attn.relative_position_bias_table"
    source[key] = torch.arange(25.).view(25, 1)  # window 3: a 5x5 grid, value 5*row + col
    out, _ = pretrain_to_task_reference(source, "retrieval", window_size=5)
    assert out[key].shape == (81, 1)
    # the interpolating spline keeps the value at offset (0, 0) and the point symmetry of the data about it
    grid = out[key].view(9, 9)
    assert grid[4, 4].item() == pytest.approx(12.0, abs=1e-4)
    assert torch.allclose(grid + grid.flip(0).flip(1), torch.full((9, 9), 24.0), atol=1e-3)
    unchanged, _ = pretrain_to_task_reference(source, "retrieval", window_size=3)
    assert torch.equal(unchanged[key], source[key])


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="unknown fine-tuning task 'pretrain'"):
        pretrain_to_task_reference(reference_pretrain_state(), "pretrain")


# --------------------------------------------------------------------------------------------- reference task <-> ours

def test_task_reference_to_ours_renames_and_reports_buffers():
    finetune, _ = pretrain_to_task_reference(reference_pretrain_state(), "retrieval")
    finetune.update({k: torch.zeros(1) for k in SWIN_BUFFERS})  # as a released fine-tuned file has them
    ours, report = task_reference_to_ours(finetune, "retrieval")
    assert set(report.dropped) == SWIN_BUFFERS | {"text_encoder.embeddings.position_ids"}
    assert "text_encoder.bert.embeddings.word_embeddings.weight" in ours
    assert "text_encoder.bert.encoder.layer.3.crossattention.self.key.weight" in ours
    # PatchMerging moves from the end of stage i (reference) to the start of stage i+1 (timm)
    assert "vision_encoder.layers.1.downsample.reduction.weight" in ours
    assert "vision_encoder.layers.2.downsample.norm.weight" in ours
    assert not any(k.startswith("vision_encoder.layers.0.downsample") for k in ours)


def test_task_reference_to_ours_rejects_the_pretraining_layout():
    with pytest.raises(ValueError, match="pre-training layout"):
        task_reference_to_ours(reference_pretrain_state(), "retrieval")


def test_ours_to_task_reference_inverts_the_renames():
    finetune, _ = pretrain_to_task_reference(reference_pretrain_state(), "retrieval")
    ours, _ = task_reference_to_ours(finetune, "retrieval")
    back = ours_to_task_reference(ours, "retrieval")
    assert set(back) == set(finetune) - {"text_encoder.embeddings.position_ids"}
    for key, value in back.items():
        assert value is finetune[key], key


def test_ours_to_task_reference_rejects_an_mlm_head():
    with pytest.raises(ValueError, match="no MLM head"):
        ours_to_task_reference({"text_encoder.cls.predictions.bias": torch.zeros(1)}, "classification")


# --------------------------------------------------------------------------------------------- convert_for_task

def test_convert_pretrain_checkpoint_for_retrieval():
    source = reference_pretrain_state()
    out, report = convert_for_task(source, "retrieval", window_size=2)
    assert detect_layout(out) == "ours_finetune"
    assert set(report.dropped) == SWIN_BUFFERS | PRETRAIN_ONLY | {"text_encoder.embeddings.position_ids"}
    assert out["text_encoder.bert.encoder.layer.2.crossattention.self.key.weight"] is \
        source["text_encoder.bert.encoder.layer.2.crossattention.self.key.weight"]
    assert out["temp"] is source["temp"]


def test_eval_load_of_a_pretraining_checkpoint_applies_the_fine_tuning_rules():
    """Zero-shot evaluation from a pre-training checkpoint: the same conversion as for fine-tuning (a raw load would
    leave the text encoder and the window unconverted)."""
    source = reference_pretrain_state()
    for task in ("retrieval", "classification", "nlvr", "vqa"):
        evaluated = convert_for_task(source, task, window_size=2, is_eval=True, num_fusion_pairs=LAYERS - FUSION,
                                     num_dec_layers=LAYERS - FUSION)
        trained = convert_for_task(source, task, window_size=2, num_fusion_pairs=LAYERS - FUSION,
                                   num_dec_layers=LAYERS - FUSION)
        assert set(evaluated[0]) == set(trained[0]) and evaluated[1].dropped == trained[1].dropped, task
        assert all(torch.equal(evaluated[0][k], trained[0][k]) for k in trained[0]), task


def test_eval_load_of_a_finetuned_checkpoint_only_renames():
    finetune, _ = pretrain_to_task_reference(reference_pretrain_state(), "classification")
    finetune["cls_head.3.weight"] = torch.ones(3, 2)
    # a window mismatch is NOT fixed in an eval load (the reference loads as is)
    out, report = convert_for_task(finetune, "classification", window_size=7, is_eval=True)
    assert out["vision_encoder.layers.0.blocks.0.attn.relative_position_bias_table"].shape == (9, 1)
    assert out["cls_head.3.weight"] is finetune["cls_head.3.weight"]
    assert set(report.dropped) == {"text_encoder.embeddings.position_ids"}


def test_finetuned_checkpoint_of_another_task_drops_foreign_heads_by_name():
    retrieval, _ = pretrain_to_task_reference(reference_pretrain_state(), "retrieval")
    out, report = convert_for_task(retrieval, "classification", window_size=2)
    assert CONTRASTIVE <= set(report.dropped)
    assert not CONTRASTIVE & set(out)


def test_domain_pretrained_nlvr_checkpoint_keeps_its_pairs():
    nlvr, _ = pretrain_to_task_reference(reference_pretrain_state(), "nlvr")
    nlvr["ta_head.weight"] = torch.zeros(3, 8)
    nlvr["vision_proj.weight"] = torch.zeros(4, 8)
    out, report = convert_for_task(nlvr, "nlvr", window_size=2, num_fusion_pairs=2)
    assert {"ta_head.weight", "vision_proj.weight"} <= set(report.dropped)
    assert "NLVR domain pre-training" in report.dropped["ta_head.weight"]
    layers = {int(k.split(".")[4]) for k in out if k.startswith("text_encoder.bert.encoder.layer.")}
    assert layers == set(range(6))
    # a 12-layer fine-tuned (bare) checkpoint, by contrast, gets its fusion layers duplicated
    retrieval, _ = pretrain_to_task_reference(reference_pretrain_state(), "retrieval")
    out, _ = convert_for_task(retrieval, "nlvr", window_size=2, num_fusion_pairs=2)
    assert out["text_encoder.bert.encoder.layer.5.output.dense.bias"] is \
        retrieval["text_encoder.encoder.layer.3.output.dense.bias"]


def test_nlvr_from_a_finetuning_layout_needs_the_pair_count():
    nlvr, _ = pretrain_to_task_reference(reference_pretrain_state(), "nlvr")
    with pytest.raises(ValueError, match="num_fusion_pairs"):
        convert_for_task(nlvr, "nlvr", window_size=2)


def test_our_own_checkpoint_passes_through():
    finetune, _ = pretrain_to_task_reference(reference_pretrain_state(), "retrieval")
    ours, _ = task_reference_to_ours(finetune, "retrieval")
    out, report = convert_for_task(ours, "retrieval", window_size=2)
    assert report.dropped == {}
    assert set(out) == set(ours)
    assert all(out[k] is ours[k] for k in ours)


def test_wrapper_prefixes_are_removed():
    wrapped = {"module." + k: v for k, v in reference_pretrain_state().items()}
    out, _ = convert_for_task(wrapped, "retrieval", window_size=2)
    assert "text_encoder.bert.embeddings.word_embeddings.weight" in out


def test_conversion_report_merge():
    a, b = ConversionReport(), ConversionReport()
    a.drop("x", "because")
    b.drop("y", "also")
    assert a.merge(b).dropped == {"x": "because", "y": "also"}


@pytest.mark.parametrize("fusion", [2, 3])
def test_shared_kv_warning_checks_the_pairs_from_the_first_fusion_layer(fusion, caplog):
    from models.weights.finetune import _warn_if_shared_kv_differ

    def kv(layer, value):
        prefix = f"text_encoder.bert.encoder.layer.{layer}.crossattention.self."
        return {prefix + "key.weight": torch.full((2, 2), float(value)),
                prefix + "value.weight": torch.full((2, 2), float(value))}

    shared = {}
    for pair in range(3):  # layers (f, f+1), (f+2, f+3), (f+4, f+5) share their key/value
        shared.update(kv(fusion + 2 * pair, pair))
        shared.update(kv(fusion + 2 * pair + 1, pair))
    with caplog.at_level("WARNING"):
        _warn_if_shared_kv_differ(shared)
    assert "differ" not in caplog.text  # neighbours across pairs differ, and that is fine
    broken = dict(shared, **kv(fusion + 1, 9))
    with caplog.at_level("WARNING"):
        _warn_if_shared_kv_differ(broken)
    assert f"layer.{fusion}.crossattention.self.key.weight and " in caplog.text
