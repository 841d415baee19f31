"""Swin weights: official / reference keys <-> timm's, bias-table interpolation, loading an official file."""
import numpy as np
import pytest
import torch
from timm.models.swin_transformer import checkpoint_filter_fn

from models.vision import SwinVisionEncoder, build_vision_encoder, load_vision_config
from models.weights.errors import CheckpointMismatchError, WeightsFileError
from models.weights.swin import (interpolate_relative_position_bias_table, load_official_swin,
                                 swin_ours_to_reference, swin_reference_to_ours)
# the tiny Swin config and fixtures (tiny_encoder, images) of the encoder tests
from tests.models.test_vision import TINY, images, tiny_encoder  # noqa: F401

TINY_384 = dict(TINY, image_res=384, window_size=12)
# manifest -> image resolution of its Swin-B (pre-training runs at 224, every fine-tuning model at 384)
MANIFEST_RES = {"pretrain": 224, "nlvr-domain-pretrain": 224, "retrieval": 384, "classification": 384,
                "nlvr": 384, "vqa": 384}


# --------------------------------------------------------------------------------------------- helpers

def reference_layout(config, with_buffers=True, with_head=False):
    """Key -> shape of the reference/official Swin state dict (docs/model.md#swin-layouts), written out by hand."""
    keys = {"patch_embed.proj.weight": (config["embed_dim"], 3, 4, 4), "patch_embed.proj.bias": (config["embed_dim"],),
            "patch_embed.norm.weight": (config["embed_dim"],), "patch_embed.norm.bias": (config["embed_dim"],)}
    size = config["image_res"] // 4
    for i, (depth, heads) in enumerate(zip(config["depths"], config["num_heads"])):
        dim = config["embed_dim"] * 2 ** i
        window = min(size, config["window_size"])
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            keys.update({p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
                         p + "attn.relative_position_bias_table": ((2 * window - 1) ** 2, heads),
                         p + "attn.qkv.weight": (3 * dim, dim), p + "attn.qkv.bias": (3 * dim,),
                         p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,),
                         p + "norm2.weight": (dim,), p + "norm2.bias": (dim,),
                         p + "mlp.fc1.weight": (4 * dim, dim), p + "mlp.fc1.bias": (4 * dim,),
                         p + "mlp.fc2.weight": (dim, 4 * dim), p + "mlp.fc2.bias": (dim,)})
            if with_buffers:
                keys[p + "attn.relative_position_index"] = (window ** 2, window ** 2)
                if j % 2 == 1 and size > window:
                    keys[p + "attn_mask"] = ((size // window) ** 2, window ** 2, window ** 2)
        if i < len(config["depths"]) - 1:
            keys.update({f"layers.{i}.downsample.reduction.weight": (2 * dim, 4 * dim),
                         f"layers.{i}.downsample.norm.weight": (4 * dim,),
                         f"layers.{i}.downsample.norm.bias": (4 * dim,)})
            size //= 2
    keys.update({"norm.weight": (config["vision_width"],), "norm.bias": (config["vision_width"],)})
    if with_head:
        keys.update({"head.weight": (1000, config["vision_width"]), "head.bias": (1000,)})
    return keys


def random_reference_state(config, seed=0, **layout):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=gen) if not k.endswith("relative_position_index")
            else torch.randint(0, 10, shape, generator=gen) for k, shape in reference_layout(config, **layout).items()}


def source_axis(src_size, dst_size):
    """Non-uniform source offsets of the reference interpolation, derived independently from
    docs/model.md#bias-table-interpolation."""
    n, target = src_size // 2, dst_size // 2
    lo, hi = 1.01, 1.5
    while hi - lo > 1e-6:
        q = (lo + hi) / 2
        total = sum(q ** i for i in range(n))  # 1 + q + ... + q^(n-1)
        lo, hi = (lo, q) if total > target else (q, hi)
    d = np.cumsum([q ** i for i in range(n)])
    return np.concatenate([-d[::-1], [0.0], d])


def table_from(fn, axis, heads=1):
    """Flattened (row-major, dy first) table with entry fn(dy, dx, head)."""
    dy, dx = np.meshgrid(axis, axis, indexing="ij")
    return torch.tensor(np.stack([fn(dy, dx, h).reshape(-1) for h in range(heads)], axis=1), dtype=torch.float64)


def asymmetric_cubic(dy, dx, head):
    return 0.02 * dy ** 3 - 0.05 * dx ** 2 * dy + 0.3 * dx + 0.1 * dy - 0.01 * dx ** 3 + head


def test_interpolation_same_size_is_identity():
    table = torch.randn(169, 3)
    assert interpolate_relative_position_bias_table(table, 169) is table


@pytest.mark.parametrize("src_window,dst_window", [(7, 12), (7, 15), (12, 7)])
def test_interpolation_reproduces_an_asymmetric_cubic(src_window, dst_window):
    """Cubic splines reproduce cubics: the output must be f at the uniform target offsets, dy first."""
    src, dst = 2 * src_window - 1, 2 * dst_window - 1
    table = table_from(asymmetric_cubic, source_axis(src, dst), heads=2).float()
    out = interpolate_relative_position_bias_table(table, dst * dst)
    target = np.arange(-(dst // 2), dst // 2 + 1, dtype=np.float64)
    expected = table_from(asymmetric_cubic, target, heads=2).float()
    assert out.shape == (dst * dst, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    transposed = table_from(lambda dy, dx, h: asymmetric_cubic(dx, dy, h), target, heads=2).float()
    assert (out - transposed).abs().max() > 0.5  # f is asymmetric, so a dy/dx swap would be caught


def test_interpolation_follows_a_smooth_function():
    src, dst = 13, 23
    fn = lambda dy, dx, h: np.sin(0.3 * dy + 0.1 * h) * np.cos(0.2 * dx)  # noqa: E731
    out = interpolate_relative_position_bias_table(table_from(fn, source_axis(src, dst), heads=4), dst * dst)
    target = np.arange(-11, 12, dtype=np.float64)
    torch.testing.assert_close(out, table_from(fn, target, heads=4), rtol=0, atol=2e-2)


# Values of the reference's own routine (scipy.interpolate.interp2d, kind='cubic', SciPy 1.13.1, the last release
# that has it) on the table sin(i) * cos(i / 2), i = 0..rows-1, at a few output rows.
INTERP2D_VALUES = {
    (13, 23): {0: 1.036969e-05, 1: 0.3742369, 23: 0.1318023, 25: 0.710264, 264: -0.2932654, 526: 0.292359,
               528: 0.6780979},
    (5, 9): {11: 0.4329824, 40: -0.5152014, 78: -0.8686519, 80: -0.7641759},  # target beyond the source range
}


@pytest.mark.parametrize("src,dst", sorted(INTERP2D_VALUES))
def test_interpolation_matches_scipy_interp2d_values(src, dst):
    rows = torch.arange(src * src, dtype=torch.float32)
    table = (torch.sin(rows) * torch.cos(0.5 * rows)).unsqueeze(1)
    out = interpolate_relative_position_bias_table(table, dst * dst)[:, 0]
    for row, value in INTERP2D_VALUES[(src, dst)].items():
        assert out[row].item() == pytest.approx(value, abs=1e-6), row


def test_interpolation_rejects_non_square_tables():
    with pytest.raises(ValueError, match="170"):
        interpolate_relative_position_bias_table(torch.zeros(170, 2), 529)
    with pytest.raises(ValueError, match="dst_rows = 144"):
        interpolate_relative_position_bias_table(torch.zeros(169, 2), 144)


# --------------------------------------------------------------------------------------------- key layouts

def test_reference_to_ours_round_trip(tiny_encoder):
    reference = random_reference_state(TINY, with_buffers=True, with_head=True)
    ours = swin_reference_to_ours(reference)
    expected = {k: tuple(v.shape) for k, v in tiny_encoder.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.items()} == expected
    assert ours["layers.1.downsample.reduction.weight"] is reference["layers.0.downsample.reduction.weight"]
    assert ours["layers.3.downsample.norm.bias"] is reference["layers.2.downsample.norm.bias"]
    back = swin_ours_to_reference(ours)
    plain = {k: v for k, v in reference.items()
             if not (k.startswith("head.") or k.endswith(("relative_position_index", "attn_mask")))}
    assert set(back) == set(plain) and all(back[k] is plain[k] for k in plain)


def test_reference_to_ours_agrees_with_timm_checkpoint_filter(tiny_encoder):
    reference = random_reference_state(TINY, with_buffers=True, with_head=True)
    timm_converted = {k: v for k, v in checkpoint_filter_fn(reference, tiny_encoder).items()
                      if not k.startswith("head.")}
    ours = swin_reference_to_ours(reference)
    assert set(ours) == set(timm_converted) and all(torch.equal(ours[k], timm_converted[k]) for k in ours)


def test_reference_to_ours_resizes_tables_for_a_new_window():
    reference = random_reference_state(TINY, with_buffers=False)
    ours = swin_reference_to_ours(reference, window_size=12)
    key = "layers.1.blocks.0.attn.relative_position_bias_table"
    assert ours[key].shape == (529, 2)
    torch.testing.assert_close(ours[key], interpolate_relative_position_bias_table(reference[key], 529))
    encoder = SwinVisionEncoder(TINY_384)
    encoder.load_state_dict(ours, strict=True)


def test_layout_errors():
    with pytest.raises(ValueError, match="vision_encoder"):
        swin_reference_to_ours({"vision_encoder.norm.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="layers.0.downsample"):
        swin_ours_to_reference({"layers.0.downsample.norm.weight": torch.zeros(1)})


def test_ours_to_reference_with_buffers_matches_the_reference_layout(tiny_encoder):
    exported = swin_ours_to_reference(tiny_encoder.state_dict(), encoder=tiny_encoder)
    assert {k: tuple(v.shape) for k, v in exported.items()} == reference_layout(TINY, with_buffers=True)


# --------------------------------------------------------------------------------------------- loading

def test_load_official_pth_into_another_window(tmp_path):
    reference = random_reference_state(TINY, with_buffers=True, with_head=True)
    path = tmp_path / "swin_official.pth"
    torch.save({"model": reference}, path)
    encoder, report = build_vision_encoder(TINY_384, load_params=True, ckpt_path=path)
    assert report["missing"] == [] and report["unexpected"] == ["head.bias", "head.weight"]
    key = "layers.2.blocks.1.attn.relative_position_bias_table"
    torch.testing.assert_close(encoder.state_dict()[key], interpolate_relative_position_bias_table(reference[key], 529))
    torch.testing.assert_close(encoder.state_dict()["layers.2.downsample.norm.weight"],
                               reference["layers.1.downsample.norm.weight"])


def test_load_our_own_safetensors(tmp_path, tiny_encoder, images):
    from safetensors.torch import save_file
    path = tmp_path / "swin.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_encoder.state_dict().items()}, str(path))
    torch.manual_seed(123)
    fresh = SwinVisionEncoder(TINY).eval()
    assert load_official_swin(fresh, path) == {"path": str(path), "missing": [], "unexpected": []}
    with torch.no_grad():
        torch.testing.assert_close(fresh(images[:1]), tiny_encoder(images[:1]), rtol=0, atol=0)


def test_load_reports_missing_keys_and_rejects_foreign_files(tmp_path, tiny_encoder):
    partial = {k: v for k, v in tiny_encoder.state_dict().items() if not k.startswith("norm.")}
    torch.save(partial, tmp_path / "partial.pth")
    encoder = SwinVisionEncoder(TINY)
    assert load_official_swin(encoder, tmp_path / "partial.pth")["missing"] == ["norm.bias", "norm.weight"]
    torch.save({"vision_encoder.norm.weight": torch.zeros(128)}, tmp_path / "cclm.pth")
    with pytest.raises(CheckpointMismatchError, match="cclm.pth: none of its 1 keys is a Swin encoder key"):
        load_official_swin(encoder, tmp_path / "cclm.pth")
    with pytest.raises(WeightsFileError, match=r"nothing\.pth does not exist"):
        load_official_swin(encoder, tmp_path / "nothing.pth")
    with pytest.raises(ValueError, match="no 'ckpt'"):
        build_vision_encoder(TINY, load_params=True)


def test_load_rejects_wrong_shapes(tmp_path):
    reference = random_reference_state(dict(TINY, embed_dim=32, vision_width=256))
    torch.save({"model": reference}, tmp_path / "wide.pth")
    with pytest.raises(CheckpointMismatchError, match=r"wide\.pth: \d+ weight\(s\) have another shape .*"
                                                      r"patch_embed\.proj\.weight: file \(32, 3, 4, 4\) vs model"):
        load_official_swin(SwinVisionEncoder(TINY), tmp_path / "wide.pth")


# --------------------------------------------------------------------------------------------- golden (../shared)


def test_golden_official_checkpoint_loads(golden_dir):
    config = load_vision_config(golden_dir / "vision" / "config_swin_tiny_224.json")
    encoder, report = build_vision_encoder(config, load_params=True, ckpt_path=golden_dir / config["ckpt"])
    assert report["missing"] == []
    assert report["unexpected"] == ["head.bias", "head.weight"]


# --------------------------------------------------------------------------------------------- manifests (../shared)

def read_manifest(path):
    rows = {}
    for line in path.read_text().splitlines()[1:]:
        key, shape, dtype = line.split("\t")
        if key.startswith("vision_encoder."):
            dims = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
            rows[key[len("vision_encoder."):]] = (dims, dtype)
    return rows


@pytest.mark.parametrize("manifest", sorted(MANIFEST_RES))
def test_full_size_swin_b_matches_manifest(shared_docs, manifest):
    rows = read_manifest(shared_docs / f"cclm-{manifest}-keys.tsv")
    res = MANIFEST_RES[manifest]
    with torch.device("meta"):
        encoder = SwinVisionEncoder(load_vision_config(f"swin_base_{res}"))
    exported = swin_ours_to_reference(encoder.state_dict(), encoder=encoder)
    got = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in exported.items()}
    assert got == rows
    # without buffers: exactly the manifest's parameters
    params = swin_ours_to_reference(encoder.state_dict())
    assert set(params) == {k for k in rows if not k.endswith(("relative_position_index", "attn_mask"))}
