"""XVNLI loader on every real IGLUE sample file (``Flikr30kID`` key, ``-`` labels dropped and counted)."""
import json
import re

import pytest
from PIL import Image

from dataset.checked import AnnotationError
from dataset.transforms import build_transform
from dataset.xvnli import LABELS, XVNLIDataset, collate_xvnli

RES = 16
# file: (lines, lines labelled "-"), counted in the sample files
FILES = {
    "annotations/en/test.jsonl": (30, 1), "annotations/ar/test.jsonl": (30, 1), "annotations/fr/test.jsonl": (30, 1),
    "annotations/en/train_1.jsonl": (3, 0), "annotations/ar/train_1.jsonl": (3, 0),
    "annotations/fr/train_1.jsonl": (3, 0), "annotations/en/train_48.jsonl": (30, 0),
    "annotations/ar/train_48.jsonl": (30, 0), "annotations/fr/train_48.jsonl": (30, 0),
    "annotations_machine-translate/ar/test.jsonl": (30, 1), "annotations_machine-translate/fr/test.jsonl": (30, 1),
}


def write_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (10, 120, 200)).save(path, format="JPEG")


@pytest.fixture(scope="module")
def transform():
    return build_transform("test", RES)


def test_label_map_is_the_reference_one():
    assert LABELS == {"contradiction": 0, "entailment": 1, "neutral": 2}


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_sample_file_loads(iglue_sample, tmp_path, transform, name):
    path = iglue_sample / "datasets/XVNLI" / name
    lines, dashes = FILES[name]
    root = tmp_path / "flickr30k-images"
    for line in path.read_text(encoding="utf-8").splitlines():
        write_image(root / f"{json.loads(line)['Flikr30kID']}.jpg")
    ds = XVNLIDataset(path, root, transform)
    assert len(ds) == lines - dashes and ds.dropped == dashes
    for i in range(len(ds)):
        image, hypothesis, label = ds[i]
        assert image.shape == (3, RES, RES) and hypothesis and label in (0, 1, 2)
    images, texts, labels = collate_xvnli([ds[0], ds[1]])
    assert images.shape == (2, 3, RES, RES) and len(texts) == 2 and labels.dtype.is_floating_point is False


def test_first_english_test_pairs(iglue_sample, tmp_path):
    ds = XVNLIDataset(iglue_sample / "datasets/XVNLI/annotations/en/test.jsonl", tmp_path, lambda im: im)
    first, second = ds.examples[:2]
    assert (first.hypothesis, first.label) == ("he is wearing the newspaper on his head", 0)  # contradiction
    assert (second.hypothesis, second.label) == ("he is reading the newspaper", 2)            # neutral
    assert first.image == str(tmp_path / "759822302.jpg")


def test_missing_image_names_image_and_line(iglue_sample, tmp_path):
    path = iglue_sample / "datasets/XVNLI/annotations/en/train_1.jsonl"
    ds = XVNLIDataset(path, tmp_path, lambda im: im)
    with pytest.raises(ValueError) as info:
        ds[1]
    assert f"{path}:2" in str(info.value) and str(tmp_path) in str(info.value)


def test_malformed_line_and_missing_key(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"gold_label": "neutral", "sentence2": "A b", "Flikr30kID": "1"}\nnot json\n')
    with pytest.raises(AnnotationError, match=r"x.jsonl:2: malformed JSON"):
        XVNLIDataset(path, tmp_path, lambda im: im)
    path.write_text('{"gold_label": "neutral", "sentence2": "A b", "Flickr30kID": "1"}\n')
    with pytest.raises(AnnotationError, match=r"x.jsonl:1: missing key\(s\) \['Flikr30kID'\]"):
        XVNLIDataset(path, tmp_path, lambda im: im)
    path.write_text('{"gold_label": "-", "sentence2": "A b", "Flikr30kID": "1"}\n')
    with pytest.raises(AnnotationError, match="no line has a usable gold_label"):
        XVNLIDataset(path, tmp_path, lambda im: im)


@pytest.mark.parametrize("field,value,message", [
    ("gold_label", ["neutral"], "'gold_label' must be a string, got list"),
    ("gold_label", "maybe", "gold_label 'maybe' is not one of ['contradiction', 'entailment', 'neutral']"),
    ("sentence2", 3, "'sentence2' must be a string, got int"),
    ("Flikr30kID", None, "id None must be a string or an integer"),
])
def test_wrong_field_types_name_file_and_line(tmp_path, field, value, message):
    path = tmp_path / "x.jsonl"
    good = {"gold_label": "neutral", "sentence2": "A b", "Flikr30kID": "1"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(dict(good, **{field: value})) + "\n")
    with pytest.raises(AnnotationError, match=re.escape(f"x.jsonl:2: {message}")):
        XVNLIDataset(path, tmp_path, lambda im: im)
