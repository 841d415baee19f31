"""NLVR2 / MaRVL-style two-image datasets: NLVR2 jsonl with string labels, json lists with boolean labels."""
import json

import pytest
from PIL import Image

from dataset.checked import AnnotationError
from dataset.nlvr import NLVRDataset, collate_nlvr, nlvr2_image_files, parse_label
from dataset.transforms import build_transform

RES = 16


def write_image(path, color=(0, 128, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path, format="PNG")


@pytest.mark.parametrize("name, first_files, n_true", [
    ("dev.jsonl", ("dev/dev-850-0-img0.png", "dev/dev-850-0-img1.png"), 16),
    ("test.jsonl", ("test1/test1-0-1-img0.png", "test1/test1-0-1-img1.png"), 16),
])
def test_nlvr2_sample_files_load_with_string_labels(iglue_sample, tmp_path, name, first_files, n_true):
    path = iglue_sample / "datasets/nlvr2/annotations" / name
    for line in path.read_text(encoding="utf-8").splitlines():
        identifier = json.loads(line)["identifier"]
        prefix = identifier.rsplit("-", 1)[0]
        for k in (0, 1):
            write_image(tmp_path / prefix.split("-")[0] / f"{prefix}-img{k}.png")
    ds = NLVRDataset(path, tmp_path, build_transform("test", RES))
    assert len(ds) == 30
    assert (ds.examples[0].left, ds.examples[0].right) == tuple(str(tmp_path / f) for f in first_files)
    assert sum(ex.label for ex in ds.examples) == n_true  # "True" -> 1, counted in the file
    for i in range(len(ds)):
        left, right, sentence, label = ds[i]
        assert left.shape == right.shape == (3, RES, RES) and sentence and label in (0, 1)
    lefts, rights, sentences, labels = collate_nlvr([ds[0], ds[1]])
    assert lefts.shape == rights.shape == (2, 3, RES, RES) and labels.tolist() == [ds[0][3], ds[1][3]]


def test_dev_first_labels(iglue_sample, tmp_path):
    ds = NLVRDataset(iglue_sample / "datasets/nlvr2/annotations/dev.jsonl", tmp_path, lambda im: im)
    assert [ex.label for ex in ds.examples[:3]] == [0, 1, 0]  # "False", "True", "False"
    assert ds.examples[0].sentence.startswith("the right image shows a curving walkway")


def test_train_images_sit_in_their_directory():
    assert nlvr2_image_files("train-10171-0-0", 3) == ("train/3/train-10171-0-img0.png", "train/3/train-10171-0-img1.png")
    with pytest.raises(ValueError, match="not <split>-<set>-<pair>-<sentence>"):
        nlvr2_image_files("dev-850-0")


def test_json_list_with_bool_and_string_labels_and_two_images(tmp_path):
    write_image(tmp_path / "a.png", (255, 0, 0))
    write_image(tmp_path / "b.png", (0, 0, 255))
    path = tmp_path / "x.json"
    path.write_text(json.dumps([{"sentence": "Left is red.", "label": True, "images": ["a.png", "b.png"]},
                                {"sentence": "Left is blue.", "label": "False", "images": ["a.png", "b.png"]}]))
    ds = NLVRDataset(path, tmp_path, lambda im: im)
    left, right, sentence, label = ds[0]
    assert left.getpixel((0, 0)) == (255, 0, 0) and right.getpixel((0, 0)) == (0, 0, 255)
    assert (sentence, label, ds[1][3]) == ("left is red", 1, 0)


@pytest.mark.parametrize("value, expected", [(True, 1), (False, 0), ("True", 1), ("False", 0)])
def test_parse_label_accepts_bools_and_nlvr2_strings(value, expected):
    assert parse_label(value, "f:1") == expected


@pytest.mark.parametrize("value", ["true", "yes", 1, 0, None])
def test_parse_label_rejects_the_rest(value):
    with pytest.raises(AnnotationError, match="f:3: label"):
        parse_label(value, "f:3")


def test_bad_entries_name_file_and_item(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps([{"sentence": "s", "label": True, "images": ["a.png"]}]))
    with pytest.raises(AnnotationError, match=r"x.json:1: 'images' must be a list of two paths"):
        NLVRDataset(path, tmp_path, lambda im: im)
    path.write_text(json.dumps([{"sentence": "s", "label": "maybe", "images": ["a.png", "b.png"]}]))
    with pytest.raises(AnnotationError, match=r"x.json:1: label 'maybe'"):
        NLVRDataset(path, tmp_path, lambda im: im)
    path.write_text(json.dumps([{"sentence": "s", "label": True, "images": ["a.png", "missing.png"]}]))
    write_image(tmp_path / "a.png")
    with pytest.raises(ValueError) as info:
        NLVRDataset(path, tmp_path, lambda im: im)[0]
    assert "missing.png" in str(info.value) and "x.json:1" in str(info.value)
