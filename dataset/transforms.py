"""Image transforms of pre-training and fine-tuning (torchvision + RandomAugment), with the CLIP statistics."""
from __future__ import annotations

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from dataset.randaugment import ALL_OPS, COLOR_OPS, RandomAugment

# The reference normalises with CLIP's statistics although its Swin was trained with ImageNet's (kept for parity).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

PRETRAIN_CROP_SCALE = (0.2, 1.0)
FINETUNE_CROP_SCALE = (0.5, 1.0)

KINDS = ("pretrain", "train", "train_wohflip", "test", "region")


def normalize() -> T.Compose:
    """PIL image -> normalised float tensor."""
    return T.Compose([T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])


def build_transform(kind: str, image_res: int):
    """The image transform ``kind`` at ``image_res`` pixels (PIL image in, normalised 3 x res x res tensor out).

    * ``pretrain``: RandomResizedCrop (scale 0.2-1, bicubic), horizontal flip, RandomAugment(2, 7), normalise.
    * ``train`` (fine-tuning): the same with crop scale 0.5-1; ``train_wohflip``: ``train`` without the flip (the
      dataset then flips carefully itself).
    * ``test``: bicubic resize to res x res (aspect ratio not kept), normalise.
    * ``region``: for 4M region records, whose crop and flip the dataset does (boxes must follow): bicubic resize to
      res x res, RandomAugment(2, 7) with colour ops only (boxes stay valid), normalise.
    """
    if image_res <= 0:
        raise ValueError(f"image_res must be positive, got {image_res}")
    bicubic = InterpolationMode.BICUBIC
    if kind in ("pretrain", "train", "train_wohflip"):
        scale = PRETRAIN_CROP_SCALE if kind == "pretrain" else FINETUNE_CROP_SCALE
        steps = [T.RandomResizedCrop(image_res, scale=scale, interpolation=bicubic)]
        if kind != "train_wohflip":
            steps.append(T.RandomHorizontalFlip())
        steps += [RandomAugment(2, 7, ALL_OPS), normalize()]
        return T.Compose(steps)
    if kind == "test":
        return T.Compose([T.Resize((image_res, image_res), interpolation=bicubic), normalize()])
    if kind == "region":
        return T.Compose([T.Resize((image_res, image_res), interpolation=bicubic), RandomAugment(2, 7, COLOR_OPS),
                          normalize()])
    raise ValueError(f"unknown transform kind {kind!r}; expected one of {KINDS}")
