"""Full-size fine-tuning models (Swin-B 384 + XLM-R-large-shaped encoder, meta device, no weights) against the
released checkpoints' key manifests (cclm-*-keys.tsv, in the development checkout's ../shared/docs), and the
pre-training -> task conversions applied to those manifests."""
import pytest
import torch
from transformers import XLMRobertaConfig

from models.classification import CCLMClassification
from models.weights.finetune import convert_for_task, ours_to_task_reference, pretrain_to_task_reference
from models.nlvr import CCLMNLVR
from models.retrieval import CCLMRetrieval
from models.vqa import CCLMVQA

MODELS = {"retrieval": CCLMRetrieval, "classification": CCLMClassification, "nlvr": CCLMNLVR, "vqa": CCLMVQA}
SWIN_BUFFERS = ("relative_position_index", "attn_mask")
POSITION_IDS = ("text_encoder.embeddings.position_ids", "text_decoder.bert.embeddings.position_ids")
# Heads the pre-training checkpoint cannot provide (docs/model.md#fine-tuning-rules: new, in init_params).
NEW_HEADS = {"retrieval": set(), "vqa": set(),
             "classification": {"cls_head.0.weight", "cls_head.0.bias", "cls_head.1.weight", "cls_head.1.bias",
                                "cls_head.3.weight", "cls_head.3.bias"}}
NEW_HEADS["nlvr"] = NEW_HEADS["classification"]


def read_manifest(path):
    """key -> (shape tuple, dtype name); 'scalar' is the 0-dim shape."""
    rows = {}
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == ["key", "shape", "dtype"], f"{path}: unexpected header {lines[0]!r}"
    for number, line in enumerate(lines[1:], start=2):
        key, shape, dtype = line.split("\t")
        dims = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
        assert key not in rows, f"{path}:{number}: duplicate key {key}"
        rows[key] = (dims, dtype)
    return rows


def meta_state(manifest):
    """An empty (meta) state dict with the manifest's keys, shapes and dtypes."""
    return {k: torch.empty(shape, dtype=getattr(torch, dtype), device="meta") for k, (shape, dtype) in manifest.items()}


def signature(state):
    return {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state.items()}


def is_buffer(key):
    return key.endswith(SWIN_BUFFERS) or key in POSITION_IDS


@pytest.fixture(scope="module")
def xlmr_large_dir(tmp_path_factory):
    """A directory holding only an XLM-R-large config.json (24 layers; the models keep 12)."""
    path = tmp_path_factory.mktemp("xlmr-large")
    XLMRobertaConfig(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                     intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                     layer_norm_eps=1e-5).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def full_size_models(xlmr_large_dir):
    config = {"vision_config": "swin_base_384", "image_res": 384, "text_encoder": str(xlmr_large_dir),
              "text_num_hidden_layers": 12, "embed_dim": 256, "temp": 0.07, "num_labels": 3, "num_dec_layers": 6}
    with torch.device("meta"):
        return {task: cls(config) for task, cls in MODELS.items()}


@pytest.mark.parametrize("task", sorted(MODELS))
def test_full_size_model_matches_the_released_manifest(shared_docs, full_size_models, task):
    manifest = read_manifest(shared_docs / f"cclm-{task}-keys.tsv")
    model = full_size_models[task]
    exported = signature(ours_to_task_reference(model.state_dict(), task, vision_encoder=model.vision_encoder))
    assert sorted(set(manifest) - set(exported)) == []
    assert sorted(set(exported) - set(manifest)) == []
    wrong = {k: (exported[k], manifest[k]) for k in manifest if exported[k] != manifest[k]}
    assert wrong == {}
    # without the model, only parameters are exported: exactly the manifest minus its buffers
    params_only = ours_to_task_reference(model.state_dict(), task)
    assert set(params_only) == {k for k in manifest if not is_buffer(k)}


@pytest.mark.parametrize("task", sorted(MODELS))
def test_released_finetuned_checkpoint_loads_by_renames_only(shared_docs, full_size_models, task):
    manifest = read_manifest(shared_docs / f"cclm-{task}-keys.tsv")
    model = full_size_models[task]
    converted, report = convert_for_task(meta_state(manifest), task, window_size=12, is_eval=True,
                                         num_fusion_pairs=6, num_dec_layers=6)
    assert signature(converted) == signature(model.state_dict())
    assert set(report.dropped) == {k for k in manifest if is_buffer(k)}


@pytest.mark.parametrize("task", sorted(MODELS))
def test_pretraining_manifest_converts_to_the_task_manifest(shared_docs, task):
    """The reference's fine-tuning load rules turn the pre-training keys into the task's released keys, less the
    Swin buffers (recomputed) and the new heads."""
    pretrain = read_manifest(shared_docs / "cclm-pretrain-keys.tsv")
    target = read_manifest(shared_docs / f"cclm-{task}-keys.tsv")
    out, report = pretrain_to_task_reference(meta_state(pretrain), task, window_size=12, num_fusion_pairs=6,
                                             num_dec_layers=6)
    expected = {k: v for k, v in target.items() if not k.endswith(SWIN_BUFFERS) and k not in NEW_HEADS[task]}
    assert signature(out) == expected
    swin_buffers = {k for k in pretrain if k.endswith(SWIN_BUFFERS)}
    assert swin_buffers <= set(report.dropped)
    kept_modules = {"retrieval": ("text_proj.", "vision_proj.", "temp", "itm_head.")}.get(task, ())
    foreign = {k for k in pretrain if k.startswith(("bbox_head.", "text_encoder.cls.", "itm_head.", "text_proj.",
                                                    "vision_proj.", "temp")) and not k.startswith(kept_modules)}
    if task == "vqa":  # the MLM head moves to the decoder instead of being dropped
        foreign = {k for k in foreign if not k.startswith("text_encoder.cls.")}
    assert set(report.dropped) == swin_buffers | foreign


@pytest.mark.parametrize("task", sorted(MODELS))
def test_pretraining_manifest_gives_every_task_key_but_the_new_heads(shared_docs, full_size_models, task):
    pretrain = read_manifest(shared_docs / "cclm-pretrain-keys.tsv")
    model = full_size_models[task]
    converted, _ = convert_for_task(meta_state(pretrain), task, window_size=12, num_fusion_pairs=6,
                                    num_dec_layers=6)
    own = signature(model.state_dict())
    assert set(own) - set(converted) == NEW_HEADS[task]
    assert signature(converted) == {k: v for k, v in own.items() if k not in NEW_HEADS[task]}


def test_nlvr_domain_pretrained_manifest_converts_to_the_nlvr_model(shared_docs, full_size_models):
    """Domain pre-training (224 px, already 18 layers) -> NLVR: tables resized to window 12, text kept as is,
    vision_proj and ta_head dropped by name, cls_head new."""
    domain = read_manifest(shared_docs / "cclm-nlvr-domain-pretrain-keys.tsv")
    model = full_size_models["nlvr"]
    converted, report = convert_for_task(meta_state(domain), "nlvr", window_size=12, num_fusion_pairs=6)
    own = signature(model.state_dict())
    assert signature(converted) == {k: v for k, v in own.items() if k not in NEW_HEADS["nlvr"]}
    assert set(report.dropped) == {k for k in domain if is_buffer(k)} | {"vision_proj.weight", "vision_proj.bias",
                                                                         "ta_head.weight", "ta_head.bias"}


def test_nlvr_pairs_share_cross_attention_key_and_value(full_size_models):
    layers = full_size_models["nlvr"].text_encoder.bert.encoder.layer
    assert len(layers) == 18
    for first in range(6, 18, 2):
        a, b = layers[first].crossattention.self, layers[first + 1].crossattention.self
        assert a.key is b.key and a.value is b.value
        assert a.query is not b.query
