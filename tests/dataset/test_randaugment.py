"""RandomAugment on PIL images: op magnitudes, fill colour, op lists, errors."""
import pytest
import torch
from PIL import Image

from dataset.randaugment import ALL_OPS, COLOR_OPS, RandomAugment


def flat(color=(100, 50, 200), size=(20, 20)):
    return Image.new("RGB", size, color)


def test_brightness_at_magnitude_7_multiplies_by_1_36():
    out = RandomAugment(1, 7, ["Brightness"], prob=1.0)(flat((100, 50, 200)))
    assert out.getpixel((5, 5)) == (136, 68, 255)  # 200 * 1.36 saturates


def test_identity_and_skipped_ops_leave_the_image():
    image = Image.radial_gradient("L").convert("RGB")
    assert list(RandomAugment(2, 7, ["Identity"], prob=1.0)(image).getdata()) == list(image.getdata())
    assert list(RandomAugment(2, 7, ALL_OPS, prob=0.0)(image).getdata()) == list(image.getdata())


def test_rotation_fills_corners_with_grey():
    out = RandomAugment(1, 7, ["Rotate"], prob=1.0)(flat((255, 0, 0), (40, 40)))
    assert out.getpixel((0, 0)) == (128, 128, 128)
    assert out.getpixel((20, 20)) == (255, 0, 0)


@pytest.mark.parametrize("op", ["TranslateX", "TranslateY"])
def test_translation_moves_by_seven_pixels(op):
    out = RandomAugment(1, 7, [op], prob=1.0)(flat((0, 0, 255), (30, 30)))
    grey = [(x, y) for x in range(30) for y in range(30) if out.getpixel((x, y)) == (128, 128, 128)]
    assert len(grey) == 7 * 30


def test_colour_ops_keep_geometry():
    image = Image.new("RGB", (32, 32), (20, 20, 20))
    image.paste((220, 220, 220), (8, 8, 16, 16))
    augment = RandomAugment(2, 7, COLOR_OPS, prob=1.0)
    for seed in range(30):
        torch.manual_seed(seed)
        out = augment(image).convert("L")
        inside, outside = out.getpixel((12, 12)), out.getpixel((24, 24))
        assert inside > outside, seed


def test_unknown_op_and_wrong_input():
    with pytest.raises(ValueError, match="unknown ops"):
        RandomAugment(2, 7, ["Solarize"])
    with pytest.raises(TypeError, match="PIL image"):
        RandomAugment()(torch.zeros(3, 4, 4))
