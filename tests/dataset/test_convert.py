"""The converters (Karpathy, Multi30K raw text, WIT pixel join) and their command line, on hand-made inputs."""
import base64
import gzip
import io
import json

import pytest
from PIL import Image

from dataset.checked import AnnotationError, iter_jsonl
from dataset.convert import karpathy_to_retrieval, main, multi30k_to_retrieval
from dataset.retrieval import ImageRoots, read_eval_data, read_train_pairs

KARPATHY_COCO = {"dataset": "coco", "images": [
    {"filepath": "train2014", "filename": "COCO_train2014_1.jpg", "cocoid": 1, "split": "train",
     "sentences": [{"raw": "A cat. "}, {"raw": "A small cat"}]},
    {"filepath": "val2014", "filename": "COCO_val2014_2.jpg", "cocoid": 2, "split": "restval",
     "sentences": [{"raw": "A dog"}]},
    {"filepath": "val2014", "filename": "COCO_val2014_3.jpg", "cocoid": 3, "split": "val",
     "sentences": [{"raw": "A bird"}, {"raw": ""}]},
    {"filepath": "val2014", "filename": "COCO_val2014_4.jpg", "cocoid": 4, "split": "test",
     "sentences": [{"raw": "A fish"}, {"raw": "Fish"}]},
]}


def test_karpathy_coco_splits():
    splits = karpathy_to_retrieval(KARPATHY_COCO)
    assert splits["train"] == [
        {"caption": "A cat.", "image": "coco/train2014/COCO_train2014_1.jpg", "image_id": 1},
        {"caption": "A small cat", "image": "coco/train2014/COCO_train2014_1.jpg", "image_id": 1},
        {"caption": "A dog", "image": "coco/val2014/COCO_val2014_2.jpg", "image_id": 2},  # restval joins train
    ]
    assert splits["val"] == [{"image": "coco/val2014/COCO_val2014_3.jpg", "caption": ["A bird"], "image_id": 3}]
    assert splits["test"] == [{"image": "coco/val2014/COCO_val2014_4.jpg", "caption": ["A fish", "Fish"], "image_id": 4}]


def test_karpathy_cli_writes_files_the_retrieval_loader_reads(tmp_path):
    source = tmp_path / "dataset_coco.json"
    source.write_text(json.dumps(KARPATHY_COCO))
    assert main(["karpathy", str(source), "--out-dir", str(tmp_path / "mscoco")]) == 0
    names = sorted(p.name for p in (tmp_path / "mscoco").iterdir())
    assert names == ["en.1k_test.json", "en.5k_test.json", "en.train.json", "en.valid.json"]
    roots = ImageRoots(images=tmp_path / "images")
    pairs = read_train_pairs("caption_json", tmp_path / "mscoco/en.train.json", roots)
    assert [p.caption for p in pairs] == ["a cat", "a small cat", "a dog"]
    test = read_eval_data("caption_json", tmp_path / "mscoco/en.1k_test.json", roots)
    assert test.texts == ["a fish", "fish"] and test.img2txt == [[0, 1]]
    flickr = {"dataset": "flickr30k", "images": [{"filename": "10.jpg", "split": "test", "sentences": [{"raw": "x"}]}]}
    (tmp_path / "f.json").write_text(json.dumps(flickr))
    assert main(["karpathy", str(tmp_path / "f.json"), "--out-dir", str(tmp_path / "f")]) == 0
    assert json.loads((tmp_path / "f/flickr30k_test.json").read_text()) == [
        {"image": "flickr30k-images/10.jpg", "caption": ["x"], "image_id": "10"}]


def test_karpathy_errors():
    with pytest.raises(AnnotationError, match="not a Karpathy split file"):
        karpathy_to_retrieval({"annotations": []})
    bad = {"dataset": "coco", "images": [dict(KARPATHY_COCO["images"][0], split="holdout")]}
    with pytest.raises(AnnotationError, match=r"\[images\[0\]\]: unknown split 'holdout'"):
        karpathy_to_retrieval(bad)
    strings = {"dataset": "coco", "images": [dict(KARPATHY_COCO["images"][0], sentences=["A cat."])]}
    with pytest.raises(AnnotationError, match=r"\[images\[0\]\]: 'sentences' must be a list of objects"):
        karpathy_to_retrieval(strings)


def test_karpathy_without_a_dataset_key_names_files_as_it_builds_paths(tmp_path):
    flickr = {"images": [{"filename": "10.jpg", "split": "test", "sentences": [{"raw": "x"}]}]}  # no cocoid
    (tmp_path / "f.json").write_text(json.dumps(flickr))
    assert main(["karpathy", str(tmp_path / "f.json"), "--out-dir", str(tmp_path / "f")]) == 0
    assert json.loads((tmp_path / "f/flickr30k_test.json").read_text())[0]["image"] == "flickr30k-images/10.jpg"


def test_multi30k_raw_text_train_and_test(tmp_path):
    (tmp_path / "train.txt").write_text("100.jpg\n200.jpg\n")
    with gzip.open(tmp_path / "train.de.gz", "wt", encoding="utf-8") as f:
        f.write("Ein Hund.\nZwei Katzen.\n")
    (tmp_path / "train.2.de").write_text("Hund\nKatzen\n\n")
    train = multi30k_to_retrieval(tmp_path / "train.txt", [tmp_path / "train.de.gz"], "train")
    assert train == [{"caption": "Ein Hund.", "image": "flickr30k-images/100.jpg", "image_id": "100"},
                     {"caption": "Zwei Katzen.", "image": "flickr30k-images/200.jpg", "image_id": "200"}]
    test = multi30k_to_retrieval(tmp_path / "train.txt", [tmp_path / "train.de.gz", tmp_path / "train.2.de"], "test")
    assert test[1] == {"image": "flickr30k-images/200.jpg", "caption": ["Zwei Katzen.", "Katzen"], "image_id": "200"}
    out = tmp_path / "out/test.de.json"
    assert main(["multi30k", "--image-list", str(tmp_path / "train.txt"), "--captions", str(tmp_path / "train.2.de"),
                 "--split", "test", "--out", str(out)]) == 0
    assert read_eval_data("caption_json", out, ImageRoots(images=tmp_path)).texts == ["hund", "katzen"]


def test_multi30k_mismatched_and_empty_lines(tmp_path):
    (tmp_path / "images.txt").write_text("1.jpg\n2.jpg\n3.jpg\n")
    (tmp_path / "c.en").write_text("a\nb\n")
    with pytest.raises(AnnotationError, match="c.en: 2 captions but .*images.txt lists 3 images"):
        multi30k_to_retrieval(tmp_path / "images.txt", [tmp_path / "c.en"], "train")
    (tmp_path / "c.en").write_text("a\n \nc\n")
    with pytest.raises(AnnotationError, match="c.en:2: empty caption"):
        multi30k_to_retrieval(tmp_path / "images.txt", [tmp_path / "c.en"], "train")


def png_base64(color):
    buffer = io.BytesIO()
    Image.new("RGB", (3, 3), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_wit_join_adds_image_content_and_drops_records_without_pixels(tmp_path):
    annotations = tmp_path / "iglue"
    annotations.mkdir()
    records = [{"image_url": "https://x/a.jpg", "caption_reference_description": "A"},
               {"image_url": "https://x/b.jpg", "caption_reference_description": "B"},
               {"image_url": "https://x/a.jpg", "caption_reference_description": "A again"}]
    (annotations / "test_en.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    pixels = tmp_path / "pixels"
    pixels.mkdir()
    with gzip.open(pixels / "part-0.csv.gz", "wt") as f:
        f.write(f"https://x/z.jpg\t{png_base64((0, 0, 0))}\thttps://x/z.jpg\n")
        f.write(f"https://x/a.jpg\t{png_base64((250, 0, 0))}\n")
    out = tmp_path / "bs64"
    assert main(["wit", "--annotations", str(annotations), "--pixels", str(pixels), "--out-dir", str(out)]) == 0
    joined = list(iter_jsonl(out / "test_en.jsonl"))
    assert [r["caption_reference_description"] for _, r in joined] == ["A", "A again"]  # b.jpg has no pixels
    data = read_eval_data("wit", out / "test_en.jsonl", ImageRoots())
    assert data.texts == ["a", "a again"] and data.img2txt == [[0, 1]]
    assert data.images[0].load().getpixel((1, 1)) == (250, 0, 0)


def test_cli_reports_annotation_errors(tmp_path, capsys):
    (tmp_path / "k.json").write_text("{}")
    assert main(["karpathy", str(tmp_path / "k.json"), "--out-dir", str(tmp_path)]) == 1
    assert "not a Karpathy split file" in capsys.readouterr().err
