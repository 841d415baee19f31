"""4M region records (docs/data-formats.md#region-records): a crop that contains a chosen box, a careful horizontal
flip, region items with patch masks and target boxes, and the collate to a fixed number of (region, text) pairs.

Record: ``{"binary": b64 (or a path), "caption": optional whole-image caption, "elems": [{"bb": [x, y, w, h],
"caption": {lang: text} or a list of such dicts, "attributes": optional}, ...]}``.

Careful flip, multilingual: the image is flipped with probability 0.5. When ``careful_hflip`` is on, every text of the
sample is checked per language: in a language with a left/right word table (dataset.text) the words are swapped,
("a dog on the left" -> "a dog on the right", "links" <-> "rechts", 左 <-> 右); a text in a language without a table
(or without a language) blocks the flip if it holds a left/right word of any known language. The reference's check
looked at the dict keys of multilingual captions and so never fired.

Duplicate pairs: when the kept items of a batch are fewer than ``batch_size``, the reference pads with copies, which
are false negatives for the contrastive and matching losses. Here every record also carries up to ``max_regions``
spare items (further boxes of the same crop that pass the area rule); the collate fills with spares first and copies
items only when the spares run out too (logged). Images left without an item after the cut are dropped.

Boxes: boxes are first clipped to the image (the reference asserted that the chosen box lies inside and dropped the
record otherwise); a box without area inside the image is ignored. Both are counted per file (the read report's
``boxes_outside_image``) and logged with the record's file and line. A malformed box (not 4 numbers, w or h <= 0), or
no box overlapping the image, is a BadRecordError.

Attributes (docs/data-formats.md#region-attributes): a dict language -> string or list of strings, a string, or a
list of strings. With ``code_switch`` the attribute's language is drawn at random, otherwise it is the caption's (no
attribute if absent). A list gives its first entry (as the reference's ``[0]``), a string is used whole (the
reference's ``[0]`` would take its first character).
"""
from __future__ import annotations

import logging
import math
import random

import torch
from PIL import Image

from dataset.checked import count_event
from dataset.pretrain_common import TEXT_KEYS, TextSpec, choose_captions, read_record_image, require
from dataset.shards import BadRecordError, LineRef
from dataset.text import can_swap_left_right, mentions_left_or_right, pre_caption, swap_left_right

logger = logging.getLogger(__name__)

WHOLE_IMAGE_BOX = (0.5, 0.5, 1.0, 1.0)


def image_atts_for_box(box, image_res: int, patch_size: int) -> list[int]:
    """1 + P*P mask over the patch grid (P = image_res // patch_size) covering ``box`` = (x, y, w, h) in pixels.

    Columns [x_min, x_max) and rows [y_min, y_max) with x_min = min(floor(x/ps), P-1) and
    x_max = max(x_min+1, min(ceil((x+w)/ps), P)) (rows likewise); entry 0 (the image CLS) is always 1.
    """
    n = image_res // patch_size
    x, y, w, h = box
    x_min = min(math.floor(x / patch_size), n - 1)
    x_max = max(x_min + 1, min(math.ceil((x + w) / patch_size), n))
    y_min = min(math.floor(y / patch_size), n - 1)
    y_max = max(y_min + 1, min(math.ceil((y + h) / patch_size), n))
    atts = [0] * (1 + n * n)
    atts[0] = 1
    for i in range(y_min, y_max):
        for j in range(x_min, x_max):
            atts[1 + n * i + j] = 1
    return atts


def parse_box(elem, index: int, where) -> tuple[float, float, float, float]:
    """The element's ``bb`` as (x, y, w, h) floats, w and h positive."""
    if not isinstance(elem, dict):
        raise BadRecordError(f"elems[{index}] must be an object, got {type(elem).__name__}", where)
    bb = require(elem, "bb", where)
    if not (isinstance(bb, (list, tuple)) and len(bb) == 4
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bb)):
        raise BadRecordError(f"elems[{index}].bb must be 4 numbers [x, y, w, h], got {bb!r}", where)
    x, y, w, h = (float(v) for v in bb)
    if w <= 0 or h <= 0:
        raise BadRecordError(f"elems[{index}].bb has no area: {bb!r}", where)
    return x, y, w, h


def intersect(box, window) -> tuple[float, float, float, float] | None:
    """The part of ``box`` (x, y, w, h) inside ``window`` (x0, y0, x1, y1), or None when empty."""
    x, y, w, h = box
    x0, y0, x1, y1 = window
    left, top, right, bottom = max(x, x0), max(y, y0), min(x + w, x1), min(y + h, y1)
    if right <= left or bottom <= top:
        return None
    return left, top, right - left, bottom - top


class _Item:
    """A region (or whole-image) text before encoding: its (language, cleaned text) segments and box in the crop."""

    def __init__(self, segments: list[tuple[str | None, str]], box, is_image: bool):
        self.segments, self.box, self.is_image = segments, box, is_image

    def can_flip(self) -> bool:
        return all(can_swap_left_right(lang) or not mentions_left_or_right(text) for lang, text in self.segments)

    def text(self, flipped: bool) -> str:
        parts = [swap_left_right(text, lang) if flipped and can_swap_left_right(lang) else text
                 for lang, text in self.segments]
        return " ".join(parts)


class RegionProcessor:
    """One region record -> {'image', 'items', 'spares', 'flipped'}; items hold the model's per-pair inputs."""

    def __init__(self, text: TextSpec, transform, image_res: int, patch_size: int, image_key: str = "binary",
                 is_image_rpath: bool = False, caption_key: str = "caption", max_regions: int = 5,
                 min_perc_in_image: float = 0.5, careful_hflip: bool = True, code_switch: bool = False,
                 language_chosen=None, image_root=None, flip_prob: float = 0.5):
        if image_res % patch_size:
            raise ValueError(f"image_res {image_res} is not a multiple of patch_size {patch_size}")
        if max_regions < 1:
            raise ValueError(f"max_regions must be positive, got {max_regions}")
        self.text, self.transform = text, transform
        self.image_res, self.patch_size = image_res, patch_size
        self.image_key, self.is_image_rpath, self.caption_key = image_key, is_image_rpath, caption_key
        self.max_regions, self.min_perc_in_image = max_regions, min_perc_in_image
        self.careful_hflip, self.code_switch, self.flip_prob = careful_hflip, code_switch, flip_prob
        self.language_chosen, self.image_root = language_chosen, image_root

    def __call__(self, record: dict, ref: LineRef, rng: random.Random) -> dict:
        image = read_record_image(record, self.image_key, self.is_image_rpath, ref, self.image_root)
        elems = require(record, "elems", ref)
        if not isinstance(elems, list) or not elems:
            raise BadRecordError("'elems' must be a non-empty list", ref)
        bounds = (0, 0) + image.size
        given = [parse_box(elem, i, ref) for i, elem in enumerate(elems)]
        boxes = [intersect(box, bounds) for box in given]
        self.count_boxes_outside(given, boxes, image.size, ref)
        window = self.crop_window(image.size, boxes, rng, ref)
        crop = image.crop(window)
        items = self.collect_items(record, elems, boxes, window, rng, ref)
        flipped = rng.random() < self.flip_prob and (not self.careful_hflip or all(i.can_flip() for i in items))
        if flipped:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        encoded = [self.encode_item(item, crop.size, flipped, rng, ref) for item in items]
        return {"image": self.transform(crop), "items": encoded[:self.max_regions],
                "spares": encoded[self.max_regions:], "flipped": flipped}

    def count_boxes_outside(self, given: list, clipped: list, size, ref) -> None:
        """Count (and log, the first ten and every thousandth) the boxes that reach outside their image: they are
        clipped to it, or ignored when nothing of them is inside (docs/data-formats.md#region-records)."""
        outside = [i for i, (box, kept) in enumerate(zip(given, clipped)) if kept != box]
        if not outside:
            return
        total = count_event(ref.path, "boxes_outside_image", len(outside))
        if total - len(outside) < 10 or total // 1000 > (total - len(outside)) // 1000:
            width, height = size
            logger.warning("%s: elems[%s].bb reach outside the %dx%d image: clipped to it (ignored when nothing is "
                           "inside); %d such boxes in %s so far in this process", ref, ", ".join(map(str, outside)),
                           width, height, total, ref.path)

    def crop_window(self, size, boxes, rng: random.Random, ref) -> tuple[int, int, int, int]:
        """A random crop (x0, y0, x1, y1) of the image that contains a randomly chosen box (boxes already clipped)."""
        width, height = size
        valid = [i for i, box in enumerate(boxes) if box is not None]
        if not valid:
            raise BadRecordError(f"no elems[].bb overlaps the {width}x{height} image", ref)
        x, y, w, h = boxes[valid[rng.randrange(len(valid))]]
        x0, y0 = rng.randint(0, math.floor(x)), rng.randint(0, math.floor(y))
        x1 = rng.randint(min(math.ceil(x + w), width), width)
        y1 = rng.randint(min(math.ceil(y + h), height), height)
        return x0, y0, x1, y1

    def collect_items(self, record, elems, boxes, window, rng: random.Random, ref) -> list[_Item]:
        """The whole-image caption (if any) then boxes kept by the area rule, in random order (items + spares)."""
        items = []
        if self.caption_key in record:
            lang, caption = choose_captions(record[self.caption_key], ref, rng, 1, self.language_chosen)[0]
            items.append(_Item([(lang, self.text.clean(caption, ref))], None, True))
        x0, y0 = window[0], window[1]
        order = list(range(len(elems)))
        rng.shuffle(order)
        for index in order:
            if len(items) >= 2 * self.max_regions:
                break
            if boxes[index] is None:
                continue
            kept = intersect(boxes[index], window)
            _, _, w, h = boxes[index]
            if kept is None or kept[2] * kept[3] / (w * h) <= self.min_perc_in_image:
                continue
            box = (kept[0] - x0, kept[1] - y0, kept[2], kept[3])
            items.append(_Item(self.element_segments(elems[index], index, rng, ref), box, False))
        return items

    def element_segments(self, elem: dict, index: int, rng: random.Random, ref) -> list[tuple[str | None, str]]:
        """[(lang, attribute)] (if any) + [(lang, caption)] of one element, cleaned."""
        value = require(elem, "caption", ref)
        lang, caption = choose_captions(value, ref, rng, 1, self.language_chosen, what=f"elems[{index}].caption")[0]
        segments = [(lang, self.text.clean(caption, ref))]
        attribute = self.attribute(elem.get("attributes"), lang, rng)
        if attribute is not None:
            try:
                segments.insert(0, (attribute[0], pre_caption(attribute[1], self.text.max_words)))
            except ValueError:
                pass  # an empty attribute adds nothing
        return segments

    def attribute(self, value, caption_lang, rng: random.Random) -> tuple[str | None, str] | None:
        """(lang, attribute text) to prepend, or None."""
        lang = caption_lang
        if isinstance(value, dict):
            if not value:
                return None
            lang = rng.choice(list(value)) if self.code_switch else caption_lang
            value = value.get(lang)
        if isinstance(value, list):
            value = value[0] if value else None
        return (lang, value) if isinstance(value, str) and value.strip() else None

    def encode_item(self, item: _Item, crop_size, flipped: bool, rng: random.Random, ref) -> dict:
        """The model's per-pair inputs of one item in the resized (and maybe flipped) crop."""
        text = item.text(flipped)
        if not self.text.pretokenized:  # the attribute + caption may exceed max_words together
            text = pre_caption(text, self.text.max_words)
        encoded = self.text.encode_clean(text, rng, ref)
        if item.is_image:
            encoded["image_atts"] = [1] * (1 + (self.image_res // self.patch_size) ** 2)
            encoded["target_bbox"], encoded["is_image"] = list(WHOLE_IMAGE_BOX), 1.0
            return encoded
        width, height = crop_size
        x, y, w, h = item.box
        if flipped:
            x = width - x - w
        sx, sy = self.image_res / width, self.image_res / height
        x, y, w, h = x * sx, y * sy, w * sx, h * sy
        encoded["image_atts"] = image_atts_for_box((x, y, w, h), self.image_res, self.patch_size)
        res = self.image_res
        encoded["target_bbox"] = [(x + w / 2) / res, (y + h / 2) / res, w / res, h / res]
        encoded["is_image"] = 0.0
        return encoded


class RegionCollate:
    """Records -> one region batch of exactly ``batch_size`` (region, text) pairs, spares before copies
    (docs/data-formats.md#region-batch-padding)."""

    def __init__(self, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"regions batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size
        self.copies_made = 0

    def __call__(self, samples: list[dict], rng: random.Random) -> dict:
        items, spares = [], []
        for image_index, sample in enumerate(samples):
            items += [(image_index, item) for item in sample["items"]]
            spares += [(image_index, item) for item in sample["spares"]]
        if not items:
            raise ValueError("a region batch without any item")
        chosen = self.fill(items, spares, rng)
        used = sorted({image_index for image_index, _ in chosen})
        new_index = {old: new for new, old in enumerate(used)}
        batch = {"image": torch.stack([samples[i]["image"] for i in used]),
                 "idx_to_group_img": torch.tensor([new_index[i] for i, _ in chosen], dtype=torch.long)}
        for key in TEXT_KEYS + ("image_atts",):
            batch[key] = torch.tensor([item[key] for _, item in chosen], dtype=torch.long)
        batch["target_bbox"] = torch.tensor([item["target_bbox"] for _, item in chosen], dtype=torch.float32)
        batch["is_image"] = torch.tensor([item["is_image"] for _, item in chosen], dtype=torch.float32)
        batch["ret_bbox_loss"] = True
        return batch

    def fill(self, items: list, spares: list, rng: random.Random) -> list:
        """Exactly batch_size items: a random subset, or all items + spares (+ copies only when both run short)."""
        if len(items) >= self.batch_size:
            return [items[i] for i in sorted(rng.sample(range(len(items)), self.batch_size))]
        short = self.batch_size - len(items)
        chosen = items + rng.sample(spares, min(short, len(spares)))
        short = self.batch_size - len(chosen)
        if short > 0:
            self.copies_made += short
            if self.copies_made == short or self.copies_made % 10000 < short:
                logger.warning("region batch: %d items and spares for %d pairs; %d copies added (they are false "
                               "negatives; %d so far in this worker)", len(chosen), self.batch_size, short,
                               self.copies_made)
            base = list(chosen)
            chosen += [base[i] for i in rng.sample(range(len(base)), short)] if short <= len(base) \
                else [base[i % len(base)] for i in range(short)]
        return chosen
