"""Retrieval datasets on the real IGLUE samples (xFlickr&CO, Flickr30K, WIT) and on hand-made Multi30K/COCO json.

Images are generated at the referenced paths (the sample has none); expected counts were taken from the sample
files by hand (see the IGLUE sample README) and are written out as literals.
"""
import base64
import io
import json
import re
from urllib.parse import unquote

import pytest
import torch
from PIL import Image

from dataset.checked import AnnotationError
from dataset.retrieval import (ImageRoots, RetrievalEvalDataset, collate_retrieval_eval, collate_retrieval_train,
                               limit_images, load_retrieval_eval, load_retrieval_train, read_eval_data,
                               read_wit_train)
from dataset.transforms import build_transform

RES = 16


def write_image(path, color=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path, format="JPEG" if path.suffix.lower() == ".jpg" else "PNG")


def jsonl_records(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def transform():
    return build_transform("test", RES)


@pytest.fixture
def flickrco_roots(tmp_path):
    return ImageRoots(flickr30k=tmp_path / "flickr30k-images", coco=tmp_path / "val2014")


def make_flickrco_images(files, roots):
    for path in files:
        for record in jsonl_records(path):
            root = roots.coco if "COCO" in record["img_path"] else roots.flickr30k
            write_image(root / record["img_path"])


XFLICKRCO_TEST = ["annotations/en/test.jsonl", "annotations/de/test.jsonl", "annotations/ja/test.jsonl",
                  "annotations_machine-translate/de/test_gmt.jsonl", "annotations_machine-translate/ja/test_gmt.jsonl"]


def test_xflickrco_test_files_load_with_two_image_roots(iglue_sample, flickrco_roots, transform):
    files = {name: iglue_sample / "datasets/xFlickrCO" / name for name in XFLICKRCO_TEST}
    make_flickrco_images(files.values(), flickrco_roots)
    sets = load_retrieval_eval("xflickrco", files, transform, flickrco_roots)
    for name, ds in sets.items():
        assert ds.language == name
        assert len(ds) == 30 and len(ds.texts) == 30          # 20 Flickr30K + 10 COCO records, one caption each
        assert ds.img2txt == [[i] for i in range(30)] and ds.txt2img == list(range(30))
        assert sum(str(flickrco_roots.coco) in p for p in ds.images) == 10
        assert sum(str(flickrco_roots.flickr30k) in p for p in ds.images) == 20
        assert ds.images[20].endswith("val2014/COCO_val2014_000000391895.jpg")  # line 21: first COCO record
        for i in range(len(ds)):
            image, index = ds[i]
            assert image.shape == (3, RES, RES) and index == i
    assert sets[XFLICKRCO_TEST[1]].texts[0] == "der mann trägt eine orange wollmütze"


def test_flickr30k_five_captions_per_image(iglue_sample, flickrco_roots, transform):
    files = {"en": iglue_sample / "datasets/flickr30k/annotations/valid_ann.jsonl",
             "test": iglue_sample / "datasets/flickr30k/annotations/test_ann.jsonl"}
    make_flickrco_images(files.values(), flickrco_roots)
    for ds in load_retrieval_eval("xflickrco", files, transform, flickrco_roots).values():
        assert len(ds) == 30 and len(ds.texts) == 150
        assert ds.img2txt[1] == [5, 6, 7, 8, 9]
        assert ds.txt2img[:7] == [0, 0, 0, 0, 0, 1, 1]
        images, indices = collate_retrieval_eval([ds[0], ds[29]])
        assert images.shape == (2, 3, RES, RES) and indices.tolist() == [0, 29]


@pytest.mark.parametrize("lang", ["de", "ja"])
def test_xflickrco_fewshot_train_files(iglue_sample, flickrco_roots, transform, lang):
    path = iglue_sample / f"datasets/xFlickrCO/annotations/{lang}/train_100.jsonl"
    make_flickrco_images([path], flickrco_roots)
    ds = load_retrieval_train("xflickrco", path, transform, flickrco_roots)
    assert len(ds) == 30 and len(ds.key_to_idx) == 30  # 30 images, one sentence each
    for i in range(len(ds)):
        image, caption, idx = ds[i]
        assert image.shape == (3, RES, RES) and isinstance(caption, str) and caption and idx == i
    images, captions, idx = collate_retrieval_train([ds[0], ds[1]])
    assert images.shape == (2, 3, RES, RES) and len(captions) == 2 and idx.tolist() == [0, 1]


WIT_FILES = {  # file: (records, distinct image_url), counted in the sample files
    "annotations/test_en.jsonl": (30, 20), "annotations/test_ar.jsonl": (30, 26),
    "annotations/test_ja.jsonl": (31, 30), "annotations/val_en.jsonl": (30, 30),
    "annotations_machine-translate/test_ar_gmt.jsonl": (30, 26),
    "annotations_machine-translate/test_ja_gmt.jsonl": (31, 30),
}


def test_wit_files_group_captions_by_image_url_with_image_files(iglue_sample, tmp_path, transform):
    roots = ImageRoots(wit=tmp_path / "wit")
    for name, (n_records, n_images) in WIT_FILES.items():
        path = iglue_sample / "datasets/wit" / name
        records = jsonl_records(path)
        for r in records:
            write_image(roots.wit / unquote(r["image_url"].rsplit("/", 1)[1]))
        ds = load_retrieval_eval("wit", {"x": path}, transform, roots)["x"]
        assert (len(ds.texts), len(ds)) == (n_records, n_images), name
        first_url = records[0]["image_url"]
        same_image = [t for t, r in enumerate(records) if r["image_url"] == first_url]
        assert ds.img2txt[0] == same_image
        assert all(ds.txt2img[t] == 0 for t in same_image)
        assert ds[n_images - 1][0].shape == (3, RES, RES)
    # val_en.jsonl has no final newline: its last record still loads
    assert not (iglue_sample / "datasets/wit/annotations/val_en.jsonl").read_bytes().endswith(b"\n")


def png_base64(color):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_wit_base64_image_content_is_read_from_its_own_line(iglue_sample, tmp_path):
    records = jsonl_records(iglue_sample / "datasets/wit/annotations/test_en.jsonl")
    colors = [(8 * i, 255 - 5 * i, 7 * i) for i in range(len(records))]
    joined = tmp_path / "test_en.jsonl"
    joined.write_text("".join(json.dumps(dict(r, image_content=png_base64(c)), ensure_ascii=False) + "\n"
                              for r, c in zip(records, colors)), encoding="utf-8")
    ds = RetrievalEvalDataset(read_eval_data("wit", joined, ImageRoots()), transform=lambda im: im)
    assert len(ds) == 20 and len(ds.texts) == 30
    # image k is the first record of the k-th distinct URL: its pixels carry that record's colour
    first_line_of_url = {}
    for line, r in enumerate(records):
        first_line_of_url.setdefault(r["image_url"], line)
    for k, line in enumerate(first_line_of_url.values()):
        assert ds[k][0].getpixel((1, 1)) == colors[line]
    train = load_retrieval_train("wit", joined, lambda im: im, ImageRoots())
    assert len(train) == 30 and len(train.key_to_idx) == 20


def test_wit_empty_captions_dropped_and_dot_kept(tmp_path):
    path = tmp_path / "wit.jsonl"
    rows = [("u/a.jpg", "A Caption."), ("u/a.jpg", ""), ("u/b.jpg", "."), ("u/c.jpg", "   "), ("u/d.jpg", None)]
    path.write_text("\n".join(json.dumps({"image_url": f"https://x/{u}", "caption_reference_description": c})
                              for u, c in rows), encoding="utf-8")
    data = read_eval_data("wit", path, ImageRoots(wit=tmp_path))
    assert data.texts == ["a caption", "."] and data.img2txt == [[0], [1]] and data.skipped == 3
    train = read_wit_train(path, tmp_path)  # a null caption (pandas' export of a missing one) is empty too
    assert [pair.caption for pair in train] == ["a caption", "."]


def test_multi30k_style_json_train_and_eval(tmp_path, transform):
    images = tmp_path / "images"
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        write_image(images / "flickr30k-images" / name)
    train_en = [{"caption": "A dog runs.", "image": "flickr30k-images/1.jpg", "image_id": "1"},
                {"caption": "Two cats!", "image": "flickr30k-images/2.jpg", "image_id": "2"}]
    train_de = [{"caption": "Zwei Katzen.", "image": "flickr30k-images/2.jpg", "image_id": "2"},
                {"caption": "Ein Vogel", "image": "flickr30k-images/3.jpg", "image_id": "3"}]
    test_de = [{"image": "flickr30k-images/3.jpg", "caption": ["Ein Vogel.", "Ein (kleiner) Vogel"], "image_id": "3"},
               {"image": "flickr30k-images/1.jpg", "caption": ["Ein Hund"], "image_id": "1"}]
    for name, entries in (("train.en.json", train_en), ("train.de.json", train_de), ("test.de.json", test_de)):
        (tmp_path / name).write_text(json.dumps(entries), encoding="utf-8")
    roots = ImageRoots(images=images)
    train = load_retrieval_train("caption_json", [tmp_path / "train.en.json", tmp_path / "train.de.json"],
                                 transform, roots)
    assert [train[i][1:] for i in range(4)] == [("a dog runs", 0), ("two cats", 1), ("zwei katzen", 1),
                                               ("ein vogel", 2)]
    test = load_retrieval_eval("caption_json", {"de": tmp_path / "test.de.json"}, transform, roots)["de"]
    assert test.texts == ["ein vogel", "ein kleiner vogel", "ein hund"]
    assert test.img2txt == [[0, 1], [2]] and test.txt2img == [0, 0, 1]
    assert test[1][0].shape == (3, RES, RES)
    assert len(limit_images(train.pairs, 2)) == 3  # images "1" and "2": three captions


def test_missing_image_names_the_image_and_annotation_line(iglue_sample, flickrco_roots, transform):
    path = iglue_sample / "datasets/xFlickrCO/annotations/en/test.jsonl"
    ds = load_retrieval_eval("xflickrco", {"en": path}, transform, flickrco_roots)["en"]
    with pytest.raises(ValueError) as info:
        ds[2]
    message = str(info.value)
    assert "flickr30k-images/101362133.jpg" in message
    assert f"{path}:3" in message


def test_malformed_and_incomplete_lines_name_file_and_line(tmp_path, flickrco_roots):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sentences": ["a b"], "id": 1, "img_path": "1.jpg"}\n{"sentences": ["x"], "id": 2,\n')
    with pytest.raises(AnnotationError, match=r"bad.jsonl:2: malformed JSON"):
        read_eval_data("xflickrco", bad, flickrco_roots)
    bad.write_text('{"sentences": ["a b"], "id": 1, "img_path": "1.jpg"}\n\n{"sentences": ["x"], "id": 2}\n')
    with pytest.raises(AnnotationError, match=r"bad.jsonl:3: missing key\(s\) \['img_path'\]"):
        read_eval_data("xflickrco", bad, flickrco_roots)
    bad.write_text('{"sentences": ["?!"], "id": 1, "img_path": "1.jpg"}\n')
    with pytest.raises(AnnotationError, match=r"bad.jsonl:1: caption '\?!' is empty"):
        read_eval_data("xflickrco", bad, flickrco_roots)


def test_xflickrco_eval_skips_lines_whose_sentences_are_all_empty(tmp_path, flickrco_roots):
    path = tmp_path / "t.jsonl"
    path.write_text('{"sentences": ["", " "], "id": 1, "img_path": "1.jpg"}\n'
                    '{"sentences": [], "id": 3, "img_path": "3.jpg"}\n'
                    '{"sentences": [null], "id": 4, "img_path": "4.jpg"}\n'
                    '{"sentences": ["A man"], "id": 2, "img_path": "COCO_val2014_2.jpg"}\n')
    data = read_eval_data("xflickrco", path, flickrco_roots)
    assert data.skipped == 3 and data.texts == ["a man"]
    assert str(data.images[0].path).endswith("val2014/COCO_val2014_2.jpg")


@pytest.mark.parametrize("fmt,record,message", [
    ("xflickrco", {"sentences": ["a"], "id": 1, "img_path": 7}, "'img_path' must be a string, got int"),
    ("wit", {"image_url": 7, "caption_reference_description": "a"}, "'image_url' must be a string, got int"),
    ("wit", {"image_url": "https://x/a.jpg", "caption_reference_description": ["a"]},
     "caption_reference_description must be a string or null, got list"),
])
def test_wrong_field_types_name_file_and_line(tmp_path, flickrco_roots, fmt, record, message):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"sentences": ["ok"], "id": 0, "img_path": "0.jpg", "image_url": "https://x/0.jpg",
                                "caption_reference_description": "ok"}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(AnnotationError, match=re.escape(f"t.jsonl:2: {message}")):
        read_eval_data(fmt, path, ImageRoots(flickr30k=flickrco_roots.flickr30k, coco=flickrco_roots.coco,
                                             wit=tmp_path))


def test_caption_json_image_must_be_a_string(tmp_path):
    path = tmp_path / "test.de.json"
    path.write_text(json.dumps([{"image": 3, "caption": ["ein hund"], "image_id": "3"}]))
    message = "test.de.json:1: an image path must be a non-empty string, got 3"
    with pytest.raises(AnnotationError, match=re.escape(message)):
        read_eval_data("caption_json", path, ImageRoots(images=tmp_path))


def test_bad_format_and_missing_root_are_reported(tmp_path):
    with pytest.raises(ValueError, match="unknown retrieval format 'coco'"):
        read_eval_data("coco", tmp_path / "x.json", ImageRoots())
    with pytest.raises(ValueError, match="needs the 'images' image root"):
        read_eval_data("caption_json", tmp_path / "x.json", ImageRoots())
    with pytest.raises(AnnotationError, match="annotation file not found"):
        read_eval_data("wit", tmp_path / "missing.jsonl", ImageRoots())
    assert torch.is_tensor(collate_retrieval_train([(torch.zeros(3, 2, 2), "a", 4)])[2])
