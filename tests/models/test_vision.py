"""Tests for models/vision.py: the Swin encoder (config, windows, region mode, the one-pass window attention) and
its golden image embeddings."""
import json

import numpy as np
import pytest
import torch

from models.vision import SwinVisionEncoder, load_vision_config
from models.weights.swin import swin_ours_to_reference, swin_reference_to_ours

TINY = {"image_res": 224, "window_size": 7, "embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 4, 8],
        "vision_width": 128}


@pytest.fixture(scope="module")
def tiny_encoder():
    torch.manual_seed(0)
    return SwinVisionEncoder(TINY).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------------------------- config

@pytest.mark.parametrize("name,res,window", [("swin_base_224", 224, 7), ("swin_base_384", 384, 12),
                                             ("swin_base_480", 480, 15)])
def test_bundled_swin_base_configs(name, res, window):
    config = load_vision_config(name)
    assert (config["image_res"], config["window_size"]) == (res, window)
    assert (config["embed_dim"], config["depths"], config["num_heads"], config["vision_width"]) == \
        (128, [2, 2, 18, 2], [4, 8, 16, 32], 1024)


def test_tiny_test_config_is_bundled():
    assert load_vision_config("swin_tiny_test_224") == TINY


def test_config_file_errors_name_key_and_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(dict(TINY, patch_size=32)))
    with pytest.raises(ValueError, match=r"bad\.json.*patch_size"):
        load_vision_config(path)
    path.write_text(json.dumps({k: v for k, v in TINY.items() if k != "window_size"}))
    with pytest.raises(ValueError, match=r"bad\.json.*missing key 'window_size'"):
        load_vision_config(path)
    path.write_text("{\n  \"image_res\": 224,\n}")
    with pytest.raises(ValueError, match=r"bad\.json.*line 3"):
        load_vision_config(path)
    with pytest.raises(FileNotFoundError, match="swin_base_224"):
        load_vision_config("no_such_config")


@pytest.mark.parametrize("change,message", [({"vision_width": 64}, "vision_width"),
                                            ({"num_heads": [1, 2, 4]}, "differ in length"),
                                            ({"num_heads": [3, 2, 4, 8]}, r"num_heads'\[0\]"),
                                            ({"window_size": 5}, "does not tile stage 0"),
                                            ({"image_res": 200}, "multiple of 32"),
                                            ({"depths": [2, 2, "2", 2]}, "depths")])
def test_config_geometry_errors(change, message):
    with pytest.raises(ValueError, match=message):
        load_vision_config(dict(TINY, **change))


# --------------------------------------------------------------------------------------------- forward

def test_forward_shape_and_mean_cls(tiny_encoder, images):
    with torch.no_grad():
        out = tiny_encoder(images)
    assert out.shape == (3, 1 + 49, 128)
    assert (tiny_encoder.width, tiny_encoder.num_patches, tiny_encoder.image_res, tiny_encoder.window_size) == \
        (128, 49, 224, 7)
    torch.testing.assert_close(out[:, 0], out[:, 1:].sum(dim=1) / 49, rtol=0, atol=1e-6)


def test_region_mode(tiny_encoder, images):
    idx = torch.tensor([2, 0, 0, 1])
    atts = torch.zeros(4, 50, dtype=torch.long)
    atts[:, 0] = 1
    boxes = [(1, 3, 2, 5), (0, 7, 0, 7), (4, 6, 0, 2), (6, 7, 6, 7)]  # rows r0:r1, cols c0:c1 of the 7x7 grid
    for row, (r0, r1, c0, c1) in enumerate(boxes):
        grid = torch.zeros(7, 7, dtype=torch.long)
        grid[r0:r1, c0:c1] = 1
        atts[row, 1:] = grid.flatten()
    with torch.no_grad():
        full = tiny_encoder(images)
        region, full_rows = tiny_encoder(images, idx_to_group_img=idx, image_atts=atts)
    assert region.shape == full_rows.shape == (4, 50, 128)
    torch.testing.assert_close(full_rows, full[idx], rtol=0, atol=0)
    torch.testing.assert_close(region[:, 1:], full[idx, 1:], rtol=0, atol=0)
    for row, (r0, r1, c0, c1) in enumerate(boxes):
        patches = full[idx[row], 1:].reshape(7, 7, 128)[r0:r1, c0:c1].reshape(-1, 128)
        torch.testing.assert_close(region[row, 0], patches.mean(dim=0), rtol=1e-5, atol=1e-6)


def test_region_mode_input_errors(tiny_encoder, images):
    with pytest.raises(ValueError, match="both"):
        tiny_encoder(images, idx_to_group_img=torch.tensor([0]))
    with pytest.raises(ValueError, match="image_atts must be 2 x 50"):
        tiny_encoder(images, idx_to_group_img=torch.tensor([0, 1]), image_atts=torch.ones(2, 49))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        tiny_encoder(images, idx_to_group_img=torch.tensor([0, 3]), image_atts=torch.ones(2, 50))
    with pytest.raises(ValueError, match="224"):
        tiny_encoder(torch.zeros(1, 3, 192, 192))


def test_grad_checkpointing_gives_the_same_gradients(images):
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        encoder = SwinVisionEncoder(TINY, drop_path_rate=0.0, grad_checkpointing=checkpointing).train()
        encoder(images[:1]).square().mean().backward()
        grads.append(encoder.patch_embed.proj.weight.grad)
    assert all(stage.grad_checkpointing for stage in encoder.layers)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("config", [load_vision_config("swin_base_224"), load_vision_config("swin_base_480"),
                                    dict(TINY, image_res=96, window_size=6)], ids=["224", "480", "clamped"])
def test_stage_windows_follow_the_reference(config):
    """A stage no larger than the window uses one window of the stage's size and no shift
    (docs/model.md#vision-encoder)."""
    with torch.device("meta"):
        encoder = SwinVisionEncoder(config)
    size = config["image_res"] // 4
    for i, stage in enumerate(encoder.layers):
        window = min(size, config["window_size"])
        for j, block in enumerate(stage.blocks):
            shift = window // 2 if (j % 2 and size > window) else 0
            assert block.window_size == (window, window) and block.shift_size == (shift, shift), (i, j)
            assert (block.attn_mask is None) == (shift == 0), (i, j)
            assert block.attn.relative_position_bias_table.shape[0] == (2 * window - 1) ** 2
        size //= 2


def test_drop_path_grows_linearly_over_all_blocks():
    with torch.device("meta"):
        encoder = SwinVisionEncoder(load_vision_config("swin_base_224"), drop_path_rate=0.1)
    blocks = [b for stage in encoder.layers for b in stage.blocks]
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in blocks]
    np.testing.assert_allclose(rates, [0.1 * k / 23 for k in range(24)], atol=1e-7)


# --------------------------------------------------------------------------------------------- golden (../shared)

def test_golden_image_embeds_parity(golden_dir):
    """THE vision parity check: reference weights + golden images -> the reference's image_embeds."""
    encoder = SwinVisionEncoder(load_vision_config(golden_dir / "vision" / "config_swin_tiny_224.json")).eval()
    state = torch.load(golden_dir / "tiny_state.pt", weights_only=True)
    reference = {k[len("vision_encoder."):]: v for k, v in state.items() if k.startswith("vision_encoder.")}
    encoder.load_state_dict(swin_reference_to_ours(reference), strict=True)
    image = torch.load(golden_dir / "tiny_inputs.pt", weights_only=True)["a"]["image"][:2]
    expected = torch.load(golden_dir / "tiny_outputs.pt", weights_only=True)["a.image_embeds"][:2]
    with torch.no_grad():
        out = encoder(image)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    # our recomputed buffers (relative_position_index, attn_mask) equal the ones the reference saved
    exported = swin_ours_to_reference(encoder.state_dict(), encoder=encoder)
    assert set(exported) == set(reference)
    for key, value in reference.items():
        assert torch.equal(exported[key], value), key


# --------------------------------------------------------------------------------------------- fast path

def _encoder_with_random_bias_tables(seed=0):
    """A small Swin with shifted windows in two stages and non-zero relative-position biases."""
    torch.manual_seed(seed)
    config = {"image_res": 64, "window_size": 4, "embed_dim": 8, "depths": [2, 2, 2, 1], "num_heads": [1, 2, 2, 2],
              "vision_width": 64}
    encoder = SwinVisionEncoder(config, drop_path_rate=0.0).eval()
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if name.endswith("relative_position_bias_table"):
                param.normal_()
    return encoder


def _window_attentions(encoder):
    from models.vision import _OnePassBiasWindowAttention

    return [m for m in encoder.modules() if isinstance(m, _OnePassBiasWindowAttention)]


def test_window_attention_adds_bias_and_mask_like_timm():
    from timm.models.swin_transformer import WindowAttention

    encoder = _encoder_with_random_bias_tables()
    attentions = _window_attentions(encoder)
    assert len(attentions) == 7 and any(block.attn_mask is not None for stage in encoder.layers
                                        for block in stage.blocks)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = encoder(images)
        for module in attentions:
            module.__class__ = WindowAttention  # timm's own forward
        theirs = encoder(images)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_window_attention_sdpa_path_matches_the_explicit_one():
    encoder = _encoder_with_random_bias_tables().train()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    outputs, grads = [], []
    for use_sdpa in (False, True):
        for module in _window_attentions(encoder):
            module.use_sdpa = use_sdpa
        encoder.zero_grad(set_to_none=True)
        out = encoder(images)
        out.square().mean().backward()
        outputs.append(out.detach())
        grads.append(encoder.layers[0].blocks[1].attn.relative_position_bias_table.grad.clone())
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)


def test_forward_regions_gives_each_image_once(tiny_encoder, images):
    idx = torch.tensor([1, 1, 0])
    atts = torch.ones(3, 50, dtype=torch.long)
    with torch.no_grad():
        region, full = tiny_encoder.forward_regions(images, idx, atts)
        expected = tiny_encoder(images)
    assert full.shape == (3, 50, 128) and region.shape == (3, 50, 128)
    torch.testing.assert_close(full, expected, rtol=0, atol=0)
    torch.testing.assert_close(region, expected[idx], rtol=1e-6, atol=1e-6)  # whole-image regions
