"""RandomAugment(N, M): the reference's RandAugment variant, written with PIL operations.

Each call draws N op names uniformly with replacement; each op is applied with probability 0.5 at magnitude M out of
10: Brightness/Sharpness enhance by M/10*1.8+0.1 (1.36 at M=7), shear by +-M/10*0.3, translate by +-M/10*10 px,
rotate by +-M/10*30 degrees (random sign), geometric ops filling with grey (128, 128, 128), bilinear.

Deviation from the reference, which works on NumPy arrays with OpenCV: the ops here are PIL's (ImageOps.autocontrast,
ImageOps.equalize, ImageEnhance, Image.transform/rotate), which the reference's OpenCV code imitates. Results can differ
by rounding (about one grey level) and in interpolation at pixel edges; geometry and magnitudes are the same (the
direction conventions of shear and translate do not matter because their sign is random). The input and output are
PIL images, so the op fits between torchvision transforms. Random draws come from torch's generator, so seeding
torch reproduces an augmentation.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10.0
FILL = (128, 128, 128)

COLOR_OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness")
ALL_OPS = COLOR_OPS + ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def _random_sign(value: float) -> float:
    return -value if torch.rand(()).item() < 0.5 else value


def _identity(img: Image.Image, level: float) -> Image.Image:
    return img


def _autocontrast(img: Image.Image, level: float) -> Image.Image:
    return ImageOps.autocontrast(img, cutoff=0)


def _equalize(img: Image.Image, level: float) -> Image.Image:
    return ImageOps.equalize(img)


def _enhance_factor(level: float) -> float:
    return level / MAX_LEVEL * 1.8 + 0.1


def _brightness(img: Image.Image, level: float) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(_enhance_factor(level))


def _sharpness(img: Image.Image, level: float) -> Image.Image:
    return ImageEnhance.Sharpness(img).enhance(_enhance_factor(level))


def _affine(img: Image.Image, coefficients: tuple) -> Image.Image:
    # PIL maps each output pixel back to an input pixel with these coefficients (the inverse of OpenCV's matrix).
    return img.transform(img.size, Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BILINEAR,
                         fillcolor=FILL)


def _shear_x(img: Image.Image, level: float) -> Image.Image:
    shear = _random_sign(level / MAX_LEVEL * 0.3)
    return _affine(img, (1, -shear, 0, 0, 1, 0))


def _shear_y(img: Image.Image, level: float) -> Image.Image:
    shear = _random_sign(level / MAX_LEVEL * 0.3)
    return _affine(img, (1, 0, 0, -shear, 1, 0))


def _translate_x(img: Image.Image, level: float) -> Image.Image:
    offset = _random_sign(level / MAX_LEVEL * 10.0)
    return _affine(img, (1, 0, -offset, 0, 1, 0))


def _translate_y(img: Image.Image, level: float) -> Image.Image:
    offset = _random_sign(level / MAX_LEVEL * 10.0)
    return _affine(img, (1, 0, 0, 0, 1, -offset))


def _rotate(img: Image.Image, level: float) -> Image.Image:
    degrees = _random_sign(level / MAX_LEVEL * 30.0)
    return img.rotate(degrees, resample=Image.Resampling.BILINEAR, fillcolor=FILL)


OPS: dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "Identity": _identity, "AutoContrast": _autocontrast, "Equalize": _equalize, "Brightness": _brightness,
    "Sharpness": _sharpness, "ShearX": _shear_x, "ShearY": _shear_y, "TranslateX": _translate_x,
    "TranslateY": _translate_y, "Rotate": _rotate,
}


class RandomAugment:
    """Apply ``N`` ops drawn from ``augs`` (each with probability ``prob``) at magnitude ``M`` to a PIL image."""

    def __init__(self, N: int = 2, M: float = 7, augs: Sequence[str] = ALL_OPS, prob: float = 0.5):
        unknown = [name for name in augs if name not in OPS]
        if unknown:
            raise ValueError(f"RandomAugment: unknown ops {unknown}; known: {sorted(OPS)}")
        if not augs:
            raise ValueError("RandomAugment: no op to draw from")
        self.N, self.M, self.augs, self.prob = N, M, tuple(augs), prob

    def __call__(self, img: Image.Image) -> Image.Image:
        if not isinstance(img, Image.Image):
            raise TypeError(f"RandomAugment expects a PIL image, got {type(img).__name__}")
        img = img.convert("RGB")
        for index in torch.randint(len(self.augs), (self.N,)).tolist():
            if torch.rand(()).item() < self.prob:
                img = OPS[self.augs[index]](img, self.M)
        return img

    def __repr__(self) -> str:
        return f"RandomAugment(N={self.N}, M={self.M}, augs={list(self.augs)})"
