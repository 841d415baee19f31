"""4M regions: patch masks, area rule, careful multilingual flip, boxes following the pixels, the fixed-size collate."""
import base64
import io
import json
import random

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from dataset.masking import TextMasker
from dataset.pretrain_common import TextSpec
from dataset.pretrain_regions import RegionCollate, RegionProcessor, _Item, image_atts_for_box
from dataset.shards import BadRecordError, LineRef, ShardedJsonl, ShardedJsonlDataset
from dataset.text import pad_ids, tokenize_to_ids

REF = LineRef("regions.jsonl", 0, 0)


def text_spec(tokenizer, max_tokens=24):
    return TextSpec(tokenizer, 30, max_tokens, TextMasker(tokenizer, 0.4, 6, 0.2, 3))


def processor(tokenizer, transform=None, image_res=64, patch_size=16, **kwargs):
    transform = transform or T.Compose([T.Resize((image_res, image_res)), T.ToTensor()])
    return RegionProcessor(text_spec(tokenizer), transform, image_res, patch_size, **kwargs)


def ids_of(tokenizer, text, max_tokens=24):
    return pad_ids(tokenize_to_ids(tokenizer, text, max_tokens), max_tokens, 1)[0]


def png_b64(image):
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def red_box_image(size=(100, 80), box=(20, 10, 30, 40)):
    image = Image.new("RGB", size, (0, 0, 0))
    x, y, w, h = box
    image.paste((255, 0, 0), (x, y, x + w, y + h))
    return image


@pytest.mark.parametrize("box,expected", [
    ((40, 70, 60, 20), {0, 16, 17, 18}),  # cols 1..3 (40//32=1, ceil(100/32)=4), row 2 (70//32=2, ceil(90/32)=3)
    ((220, 220, 4, 4), {0, 49}),  # last cell: col 6, row 6 -> 1 + 7*6 + 6
    ((0, 0, 224, 224), set(range(50))),
    ((64, 0, 1, 1), {0, 3}),  # a box narrower than a cell still covers one cell
])
def test_image_atts_for_a_box(box, expected):
    atts = image_atts_for_box(box, 224, 32)
    assert len(atts) == 50
    assert {i for i, v in enumerate(atts) if v} == expected


def test_area_rule_keeps_boxes_mostly_inside_the_crop(tiny_tokenizer):
    proc = processor(tiny_tokenizer, max_regions=5, min_perc_in_image=0.5)
    elems = [{"bb": b, "caption": {"en": f"box {i}"}} for i, b in
             enumerate([[40, 0, 20, 10], [30, 0, 20, 10], [35, 0, 20, 10], [60, 0, 10, 10]])]
    boxes = [tuple(map(float, e["bb"])) for e in elems]
    items = proc.collect_items({}, elems, boxes, (0, 0, 50, 100), random.Random(0), REF)
    kept = sorted(item.box for item in items)
    # box 0 is half inside (not > 0.5), box 1 fully, box 2 three quarters (clipped), box 3 outside
    assert kept == [(30.0, 0.0, 20.0, 10.0), (35.0, 0.0, 15.0, 10.0)]


def test_item_box_is_mirrored_and_scaled(tiny_tokenizer):
    proc = processor(tiny_tokenizer)
    item = _Item([("en", "a cat")], (10.0, 20.0, 30.0, 40.0), False)
    flipped = proc.encode_item(item, (100, 200), True, random.Random(0), REF)
    # mirrored x = 100 - 10 - 30 = 60; scaled by 64/100 and 64/200: (38.4, 6.4, 19.2, 12.8) in a 64 px image
    assert flipped["target_bbox"] == pytest.approx([0.75, 0.2, 0.3, 0.2])
    # 4x4 grid of 16 px: cols 2..3 (38.4//16, ceil(57.6/16)=4), rows 0..1 (6.4//16, ceil(19.2/16)=2)
    assert {i for i, v in enumerate(flipped["image_atts"]) if v} == {0, 3, 4, 7, 8}
    plain = proc.encode_item(item, (100, 200), False, random.Random(0), REF)
    assert plain["target_bbox"] == pytest.approx([0.25, 0.2, 0.3, 0.2]) and plain["is_image"] == 0.0


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_target_box_follows_the_red_pixels(tiny_tokenizer, flip_prob):
    record = {"binary": png_b64(red_box_image()), "elems": [{"bb": [20, 10, 30, 40],
                                                              "caption": {"en": "a red square on the left"}}]}
    proc = processor(tiny_tokenizer, flip_prob=flip_prob)
    for seed in range(8):
        sample = proc(record, REF, random.Random(seed))
        (item,) = sample["items"]
        cx, cy, w, h = (v * 64 for v in item["target_bbox"])
        red = (sample["image"][0] > 0.5) & (sample["image"][1] < 0.5)
        ys, xs = torch.nonzero(red, as_tuple=True)
        assert xs.min() >= cx - w / 2 - 1 and xs.max() <= cx + w / 2 + 1
        assert ys.min() >= cy - h / 2 - 1 and ys.max() <= cy + h / 2 + 1
        assert red.sum() >= 0.8 * w * h
        expected = "a red square on the right" if flip_prob else "a red square on the left"
        assert item["text_ids"] == ids_of(tiny_tokenizer, expected)
        assert sample["flipped"] == bool(flip_prob)


@pytest.mark.parametrize("lang,caption,expected", [
    ("en", "a red circle on the left", "a red circle on the right"),
    ("de", "ein roter kreis links", "ein roter kreis rechts"),
    ("zh", "左边有一个红色的圆", "右边有一个红色的圆"),
    ("fr", "un carré bleu à droite", "un carré bleu à gauche"),
])
def test_flip_swaps_left_and_right_in_each_language(tiny_tokenizer, lang, caption, expected):
    captions = {"en": "a red circle on the left", "de": "ein roter kreis links", "zh": "左边有一个红色的圆",
                "fr": "un carré bleu à droite"}
    record = {"binary": png_b64(red_box_image()), "caption": {lang: captions[lang]},
              "elems": [{"bb": [20, 10, 30, 40], "caption": captions}]}
    proc = processor(tiny_tokenizer, flip_prob=1.0, language_chosen=[lang])
    sample = proc(record, REF, random.Random(1))
    assert sample["flipped"]
    whole, region = sample["items"]
    assert whole["is_image"] == 1.0 and whole["target_bbox"] == [0.5, 0.5, 1.0, 1.0] and all(whole["image_atts"])
    assert whole["text_ids"] == region["text_ids"] == ids_of(tiny_tokenizer, expected)


def test_careful_flip_refuses_unknown_languages_with_direction_words(tiny_tokenizer):
    def run(caption, careful=True):
        record = {"binary": png_b64(red_box_image()), "elems": [{"bb": [20, 10, 30, 40], "caption": caption}]}
        return processor(tiny_tokenizer, flip_prob=1.0, careful_hflip=careful)(record, REF, random.Random(0))

    assert not run({"sw": "a red circle on the left"})["flipped"]
    assert run({"sw": "a red circle"})["flipped"]
    plain = run({"sw": "a red circle on the left"}, careful=False)
    assert plain["flipped"]
    assert plain["items"][0]["text_ids"] == ids_of(tiny_tokenizer, "a red circle on the left")


@pytest.mark.parametrize("attributes,code_switch,expected", [
    ({"en": "red", "de": "rot"}, False, "red a circle"),
    ({"en": ["red", "small"]}, False, "red a circle"),
    ("small", False, "small a circle"),
    ({"de": "rot"}, False, "a circle"),  # no attribute in the caption's language
    ({"de": ["rot"]}, True, "rot a circle"),
])
def test_attributes_are_prepended(tiny_tokenizer, attributes, code_switch, expected):
    record = {"binary": png_b64(red_box_image()),
              "elems": [{"bb": [20, 10, 30, 40], "caption": {"en": "a circle"}, "attributes": attributes}]}
    sample = processor(tiny_tokenizer, flip_prob=0.0, code_switch=code_switch)(record, REF, random.Random(0))
    assert sample["items"][0]["text_ids"] == ids_of(tiny_tokenizer, expected)


def fake_sample(image_value, n_items, n_spares, first_id):
    def item(i):
        return {"text_ids": [0, i, 2], "text_atts": [1, 1, 1], "text_ids_masked": [0, i, 2], "masked_pos": [1],
                "masked_ids": [i], "image_atts": [1] * 5, "target_bbox": [0.5, 0.5, 0.2, 0.2], "is_image": 0.0}
    ids = list(range(first_id, first_id + n_items + n_spares))
    return {"image": torch.full((3, 2, 2), float(image_value)), "items": [item(i) for i in ids[:n_items]],
            "spares": [item(i) for i in ids[n_items:]]}


def check_grouping(batch):
    """Every pair's image is the image its item came from (image value = item id // 100)."""
    for row, image_index in enumerate(batch["idx_to_group_img"].tolist()):
        assert batch["image"][image_index, 0, 0, 0].item() == batch["text_ids"][row, 1].item() // 100


def test_collate_cuts_to_the_batch_size(tiny_tokenizer):
    samples = [fake_sample(v, 4, 2, 100 * v) for v in range(1, 4)]
    batch = RegionCollate(5)(samples, random.Random(0))
    assert batch["text_ids"].shape == (5, 3) and batch["image_atts"].shape == (5, 5)
    assert batch["target_bbox"].dtype == torch.float32 and batch["is_image"].dtype == torch.float32
    assert batch["ret_bbox_loss"] is True
    ids = batch["text_ids"][:, 1].tolist()
    assert len(set(ids)) == 5 and all(i % 100 < 4 for i in ids)  # main items only, no spare, no copy
    check_grouping(batch)
    assert batch["image"].shape[0] == len(set(batch["idx_to_group_img"].tolist()))  # unused images are dropped


def test_collate_fills_with_spares_before_copies(tiny_tokenizer):
    samples = [fake_sample(1, 2, 3, 100), fake_sample(2, 1, 1, 200)]
    batch = RegionCollate(6)(samples, random.Random(0))
    ids = batch["text_ids"][:, 1].tolist()
    assert len(ids) == 6 and len(set(ids)) == 6  # 3 items + 3 of the 4 spares: no duplicate pair
    assert {100, 101, 200} <= set(ids)
    check_grouping(batch)
    short = RegionCollate(8)([fake_sample(1, 2, 1, 100)], random.Random(0))
    ids = short["text_ids"][:, 1].tolist()
    assert len(ids) == 8 and set(ids) == {100, 101, 102}  # copies only once items and spares are used up


@pytest.mark.parametrize("elems,message", [
    ([{"bb": [1, 2, 3], "caption": {"en": "a"}}], r"elems\[0\]\.bb must be 4 numbers"),
    ([{"bb": [1, 2, 0, 3], "caption": {"en": "a"}}], r"elems\[0\]\.bb has no area"),
    ([{"bb": [500, 500, 10, 10], "caption": {"en": "a"}}], "no elems.*overlaps the 100x80 image"),
    ([{"bb": [1, 2, 30, 30]}], "missing key 'caption'"),
    ([{"bb": [1, 2, 30, 30], "caption": {"en": "!!"}}], "empty text after cleaning"),
    ([], "'elems' must be a non-empty list"),
])
def test_bad_region_records_name_file_and_line(tmp_path, tiny_tokenizer, elems, message):
    good = {"binary": png_b64(red_box_image()), "elems": [{"bb": [20, 10, 30, 40], "caption": {"en": "a"}}]}
    path = tmp_path / "reg.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({"binary": good["binary"], "elems": elems}) + "\n")
    dataset = ShardedJsonlDataset(ShardedJsonl([path], shuffle=False), processor(tiny_tokenizer, min_perc_in_image=0),
                                  RegionCollate(2), batch_size=1)
    with pytest.raises(BadRecordError, match=rf"reg\.jsonl:2: {message}"):
        list(dataset)
