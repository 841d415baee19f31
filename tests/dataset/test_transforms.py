"""Image transforms: kinds, output shapes, normalisation constants, determinism under a torch seed."""
import pytest
import torch
from PIL import Image

from dataset.transforms import CLIP_MEAN, CLIP_STD, build_transform


def test_clip_statistics():
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


@pytest.mark.parametrize("kind", ["pretrain", "train", "train_wohflip", "test", "region"])
def test_every_kind_gives_a_normalised_square_tensor(kind):
    image = Image.new("RGB", (50, 30), (255, 0, 128))
    out = build_transform(kind, 32)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def test_test_transform_is_resize_and_clip_normalisation():
    out = build_transform("test", 16)(Image.new("RGB", (40, 20), (255, 0, 51)))
    expected = [(1.0 - CLIP_MEAN[0]) / CLIP_STD[0], (0.0 - CLIP_MEAN[1]) / CLIP_STD[1],
                (0.2 - CLIP_MEAN[2]) / CLIP_STD[2]]
    for channel in range(3):
        assert torch.allclose(out[channel], torch.full((16, 16), expected[channel]), atol=1e-5)


def test_random_transforms_repeat_under_the_same_seed():
    image = Image.radial_gradient("L").convert("RGB").resize((64, 48))
    transform = build_transform("pretrain", 32)
    torch.manual_seed(3)
    a = transform(image)
    torch.manual_seed(3)
    b = transform(image)
    c = transform(image)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_train_without_flip_never_mirrors():
    # left half black, right half white: a flip would put white on the left
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    image.paste((255, 255, 255), (32, 0, 64, 64))
    transform = build_transform("train_wohflip", 64)
    for seed in range(20):
        torch.manual_seed(seed)
        out = transform(image)
        assert out[:, :, :8].mean() <= out[:, :, -8:].mean(), seed


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown transform kind 'eval'"):
        build_transform("eval", 224)
