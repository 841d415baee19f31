"""models/export.py: our checkpoints in the authors' layout, checked against the released key manifests (full size,
meta device) and by round trips at tiny size (export -> load back -> equal tensors)."""
import pytest
import torch
from safetensors.torch import load_file

from models.cclm import CCLMPretrain
from models.classification import CCLMClassification
from models.export import TASK_MODELS, export_checkpoint, export_state, infer_vision_config, main
from models.nlvr import CCLMNLVR, CCLMNLVRDomain
from models.retrieval import CCLMRetrieval
from models.vision import SwinVisionEncoder, load_vision_config
from models.vqa import CCLMVQA
from models.weights.finetune import detect_layout
from models.weights.swin import swin_ours_to_reference
# the tiny models of the other model tests, and the manifest readers (xlmr_large_dir: an XLM-R-large config folder)
from tests.models.test_finetune_models import TINY_VISION_96, root, tiny_config  # noqa: F401
from tests.models.test_manifests import read_manifest, signature, xlmr_large_dir  # noqa: F401

CLASSES = {"pretrain": CCLMPretrain, "retrieval": CCLMRetrieval, "classification": CCLMClassification,
           "nlvr": CCLMNLVR, "nlvr_domain": CCLMNLVRDomain, "vqa": CCLMVQA}
MANIFESTS = {"pretrain": ("cclm-pretrain-keys.tsv", "swin_base_224"),
             "nlvr_domain": ("cclm-nlvr-domain-pretrain-keys.tsv", "swin_base_224"),
             **{task: (f"cclm-{task}-keys.tsv", "swin_base_384") for task in ("retrieval", "classification", "nlvr",
                                                                             "vqa")}}


def tiny_model(task, root, seed=0):
    """A tiny model of ``task`` with random, non-trivial weights (biases and norms perturbed)."""
    torch.manual_seed(seed)
    model = CLASSES[task](tiny_config(TINY_VISION_96), root=root)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or ".norm" in name or "LayerNorm" in name:
                param.uniform_(-0.5, 0.5)
    return model


# --------------------------------------------------------------------------------------------- manifests (../shared)

@pytest.mark.parametrize("task", sorted(MANIFESTS))
def test_export_of_every_full_size_model_is_the_released_layout(shared_docs, xlmr_large_dir, task):
    """Every key, shape and dtype of the released checkpoint, buffers included, and nothing else; the vision
    config the export infers from the weights is the bundled one."""
    manifest_file, vision = MANIFESTS[task]
    config = {"vision_config": vision, "text_encoder": str(xlmr_large_dir), "text_num_hidden_layers": 12,
              "embed_dim": 256, "temp": 0.07, "num_labels": 3, "num_dec_layers": 6}
    with torch.device("meta"):
        model = CLASSES[task](config)
        state = model.state_dict()
        encoder = SwinVisionEncoder(infer_vision_config(state))
    assert infer_vision_config(state) == {k: v for k, v in load_vision_config(vision).items() if k != "ckpt"}
    assert signature(export_state(state, task, encoder)) == read_manifest(shared_docs / manifest_file)


# --------------------------------------------------------------------------------------------- round trips (tiny)

@pytest.mark.parametrize("task,suffix", [(task, ".th") for task in sorted(CLASSES)]
                         + [("pretrain", ".safetensors"), ("vqa", ".safetensors")])  # tied weights, two text models
def test_export_loads_back_into_an_equal_model(root, tmp_path, task, suffix):
    trained = tiny_model(task, root, seed=1)
    ours = tmp_path / "checkpoint_best.pth"
    torch.save({"model": trained.state_dict(), "config": tiny_config(TINY_VISION_96)}, ours)
    out = tmp_path / f"exported{suffix}"
    assert main(["--checkpoint", str(ours), "--out", str(out), "--task", task]) == 0
    exported = load_file(str(out)) if suffix == ".safetensors" else torch.load(out, weights_only=True)["model"]
    assert detect_layout(exported).startswith("reference")
    fresh = tiny_model(task, root, seed=2)
    report = fresh.load_pretrained(out, is_eval=True)
    assert report.missing == [] and report.unexpected == [] and not getattr(report, "initialised", [])
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    # the buffers are the model's own, as the reference saves them
    swin = {k[len("vision_encoder."):]: v for k, v in exported.items() if k.startswith("vision_encoder.")}
    expected = swin_ours_to_reference(trained.vision_encoder.state_dict(), encoder=trained.vision_encoder)
    assert set(swin) == set(expected) and all(torch.equal(swin[k], expected[k]) for k in expected)


def test_the_vision_config_is_inferred_when_none_is_saved(root, tmp_path, caplog):
    trained = tiny_model("retrieval", root)
    torch.save(trained.state_dict(), tmp_path / "bare.pth")
    with caplog.at_level("WARNING"):
        export_checkpoint(tmp_path / "bare.pth", tmp_path / "out.th", as_safetensors=True)
    assert "inferred" in caplog.text
    exported = load_file(str(tmp_path / "out.th"))
    mask = "vision_encoder.layers.0.blocks.1.attn_mask"
    assert mask not in exported  # one block per stage in the tiny config: no shifted block
    index = "vision_encoder.layers.0.blocks.0.attn.relative_position_index"
    assert torch.equal(exported[index], trained.vision_encoder.layers[0].blocks[0].attn.relative_position_index)


def test_a_reference_checkpoint_is_written_as_it_is(root, tmp_path):
    reference = export_state(tiny_model("nlvr", root).state_dict(), "nlvr", None)
    torch.save({"model": reference}, tmp_path / "released.th")
    export_checkpoint(tmp_path / "released.th", tmp_path / "released.safetensors")
    again = load_file(str(tmp_path / "released.safetensors"))
    assert set(again) == set(reference) and all(torch.equal(again[k], reference[k]) for k in reference)


def test_errors_are_one_line_and_exit_2(root, tmp_path, capsys):
    torch.save({"model": tiny_model("classification", root).state_dict()}, tmp_path / "xvnli.pth")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\xff" * 8)
    cases = {("--checkpoint", str(tmp_path / "xvnli.pth"), "--task", "gqa"): "a classification checkpoint, not one "
             "of --task gqa (vqa)",
             ("--checkpoint", str(tmp_path / "xvnli.pth"), "--task", "vqa2"): "--task 'vqa2': not a task name",
             ("--checkpoint", str(tmp_path / "corrupt.safetensors")): "corrupt.safetensors: not a valid safetensors",
             ("--checkpoint", str(tmp_path / "xvnli.pth"), "--vision-config", "swin_base_384"):
                 "its Swin weights do not match the vision config swin_base_384",
             ("--checkpoint", str(tmp_path / "xvnli.pth"), "--vision-config", "nope"): "--vision-config: vision "
             "config 'nope'"}
    for args, expected in cases.items():
        assert main([*args, "--out", str(tmp_path / "out.th")]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err and "\n" not in err, (args, err)
    assert not (tmp_path / "out.th").exists() and not list(tmp_path.glob(".out.th.tmp*"))


def test_task_names_are_run_py_tasks_or_model_families():
    assert TASK_MODELS["xvnli"] == "classification" and TASK_MODELS["gqa"] == "vqa"
    assert {TASK_MODELS[name] for name in ("itr_multi30k", "itr_coco", "xflickrco", "wit")} == {"retrieval"}
    assert set(CLASSES) <= set(TASK_MODELS)
