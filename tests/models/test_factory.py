"""The model factory: registry, building without the initial weights, and telling from a checkpoint's keys alone
whether it fills the encoders (so that a run given such a checkpoint never needs the ImageNet / XLM-R files)."""
import pytest
import torch
from safetensors.torch import save_file

from models.cclm import CCLMPretrain
from models.factory import MODELS, checkpoint_fills_encoders, create_model, model_class, register_model
from models.weights.errors import CheckpointMismatchError, WeightsFileError
# the tiny configs of the other model tests (root: a tiny XLM-R config folder, no weights in it)
from tests.models.test_finetune_models import TINY_VISION_96, build, root, tiny_config  # noqa: F401


def with_initial_weights(root):
    """A tiny config that asks for the initial weights (ImageNet Swin, XLM-R), whose files do not exist."""
    vision = dict(TINY_VISION_96, ckpt="no/swin_base_patch4_window7_224_22k.pth")
    return tiny_config(vision, load_vision_params=True, load_text_params=True)


@pytest.fixture(scope="module")
def pretrained(root, tmp_path_factory):
    """A tiny pre-training checkpoint file of ours and the same weights in the reference layout (safetensors)."""
    from models.weights.pretrain import ours_to_reference

    folder = tmp_path_factory.mktemp("checkpoints")
    state = build(CCLMPretrain, root, seed=3, vision=TINY_VISION_96).state_dict()
    torch.save({"model": state, "config": {}}, folder / "cclm.pth")
    reference = {k: v.clone() for k, v in ours_to_reference(state).items()}
    save_file(reference, str(folder / "cclm_reference.safetensors"))
    return folder


def test_the_initial_weights_are_needed_unless_asked_otherwise(root):
    with pytest.raises(WeightsFileError, match="swin_base_patch4_window7_224_22k.pth does not exist"):
        create_model("cclm_pretrain", with_initial_weights(root), root=root)
    model = create_model("cclm_pretrain", with_initial_weights(root), root=root, initial_weights=False)
    assert isinstance(model, CCLMPretrain)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("file", ["cclm.pth", "cclm_reference.safetensors"])
def test_a_pretraining_checkpoint_fills_every_models_encoders(root, pretrained, name, file):
    config = with_initial_weights(root)
    assert checkpoint_fills_encoders(name, config, pretrained / file, root=root)


def test_continuing_pre_training_from_a_checkpoint_alone(root, pretrained):
    """No Swin .pth, no XLM-R weights: the run builds without them and the checkpoint fills the model."""
    config = with_initial_weights(root)
    path = pretrained / "cclm_reference.safetensors"
    fills = checkpoint_fills_encoders("cclm_pretrain", config, path, root=root)
    model = create_model("cclm_pretrain", config, root=root, initial_weights=not fills)
    report = model.load_pretrained(path)
    assert report.missing == [] and report.unexpected == []
    expected = torch.load(pretrained / "cclm.pth", weights_only=True)["model"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())


def test_a_checkpoint_without_some_encoder_weights_does_not_fill(root, pretrained, tmp_path):
    state = torch.load(pretrained / "cclm.pth", weights_only=True)["model"]
    for prefix in ("vision_encoder.layers.3.", "text_encoder.bert.encoder.layer.0.attention."):
        partial = {k: v for k, v in state.items() if not k.startswith(prefix)}
        torch.save(partial, tmp_path / "partial.pth")
        assert not checkpoint_fills_encoders("cclm_pretrain", tiny_config(TINY_VISION_96), tmp_path / "partial.pth",
                                             root=root), prefix
    heads_missing = {k: v for k, v in state.items() if not k.startswith(("itm_head.", "bbox_head."))}
    torch.save(heads_missing, tmp_path / "no_heads.pth")  # heads have no initial weights: nothing lost
    assert checkpoint_fills_encoders("cclm_pretrain", tiny_config(TINY_VISION_96), tmp_path / "no_heads.pth",
                                     root=root)


def test_an_unusable_checkpoint_is_reported_before_building(root, pretrained, tmp_path):
    (tmp_path / "broken.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(WeightsFileError, match=r"broken\.safetensors"):
        checkpoint_fills_encoders("cclm_pretrain", tiny_config(), tmp_path / "broken.safetensors", root=root)
    xvnli = build(model_class("cclm_classification"), root, seed=2).state_dict()
    torch.save(xvnli, tmp_path / "xvnli.pth")
    with pytest.raises(CheckpointMismatchError, match=r"xvnli\.pth: a classification \(XVNLI\) checkpoint does not "
                                                      r"fit the nlvr model"):
        checkpoint_fills_encoders("cclm_nlvr", tiny_config(), tmp_path / "xvnli.pth", root=root)
    with pytest.raises(CheckpointMismatchError, match=r"xvnli\.pth: .* lacks 11 weight\(s\) of the retrieval model"):
        checkpoint_fills_encoders("cclm_retrieval", tiny_config(), tmp_path / "xvnli.pth", root=root, is_eval=True)


def test_register_model_checks_the_target():
    with pytest.raises(ValueError, match="package.module:ClassName"):
        register_model("mine", "models.cclm.CCLMPretrain")
    with pytest.raises(KeyError, match="cclm_pretrain"):
        model_class("nope")
