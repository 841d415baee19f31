"""MaRVL preprocessing of the real IGLUE sample files, then loading every record as NLVR-style examples."""
import json
import os
import shutil

import pytest
from PIL import Image

from dataset.checked import AnnotationError
from dataset.marvl import convert_marvl_file, ensure_marvl
from dataset.nlvr import NLVRDataset
from dataset.transforms import build_transform

RES = 16
OUTPUTS = ["marvl-id.json", "marvl-tr.json", "marvl-zh.json", "marvl-id_gmt.json", "marvl-tr_gmt.json",
           "marvl-zh_gmt.json", "marvl-id_train10x2.json", "marvl-tr_train10x2.json", "marvl-zh_train10x2.json"]
N_TRUE = {"marvl-id": 15, "marvl-tr": 15, "marvl-zh": 15, "marvl-id_gmt": 15, "marvl-tr_gmt": 15, "marvl-zh_gmt": 15,
          "marvl-id_train10x2": 16, "marvl-tr_train10x2": 14, "marvl-zh_train10x2": 14}  # counted in the files


@pytest.fixture
def marvl_out(iglue_sample, tmp_path):
    out = tmp_path / "data/marvl"
    ensure_marvl(iglue_sample / "datasets/marvl", out)
    return out


def test_all_sample_files_are_converted(marvl_out):
    assert sorted(p.name for p in marvl_out.iterdir() if p.suffix == ".json") == sorted(OUTPUTS)


def test_zero_shot_and_few_shot_image_paths(marvl_out):
    zero = json.loads((marvl_out / "marvl-id.json").read_text(encoding="utf-8"))
    assert zero[0]["images"] == ["marvl-images/id/images/39-Panci/39-0.jpg", "marvl-images/id/images/39-Panci/39-11.jpg"]
    assert zero[0]["label"] is True and zero[1]["label"] is False
    assert zero[0]["sentence"].startswith("Panci di salah satu foto")
    few = json.loads((marvl_out / "marvl-id_train10x2.json").read_text(encoding="utf-8"))
    assert few[0]["images"] == ["marvl_fewshot/id/all/39-n-5.jpg", "marvl_fewshot/id/all/39-n-2.jpg"]
    zh = json.loads((marvl_out / "marvl-zh.json").read_text(encoding="utf-8"))
    assert zh[0]["images"][0] == "marvl-images/zh/images/82-铅笔/82-6.jpg"


@pytest.mark.parametrize("name", OUTPUTS)
def test_every_record_loads_as_two_image_examples(marvl_out, tmp_path, name):
    images = tmp_path / "images"
    entries = json.loads((marvl_out / name).read_text(encoding="utf-8"))
    for entry in entries:
        for rel in entry["images"]:
            (images / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (6, 6), (1, 2, 3)).save(images / rel, format="JPEG")
    ds = NLVRDataset(marvl_out / name, images, build_transform("test", RES))
    assert len(ds) == 30
    assert sum(ex.label for ex in ds.examples) == N_TRUE[name[:-5]]
    for i in range(len(ds)):
        left, right, sentence, label = ds[i]
        assert left.shape == (3, RES, RES) and sentence


def test_outputs_are_only_rewritten_when_outdated(iglue_sample, tmp_path, marvl_out):
    target = marvl_out / "marvl-id.json"
    os.utime(target, (1e10, 1e10))  # newer than its source
    target.write_text("[]")
    ensure_marvl(iglue_sample / "datasets/marvl", marvl_out)
    assert target.read_text() == "[]"
    ensure_marvl(iglue_sample / "datasets/marvl", marvl_out, force=True)
    assert len(json.loads(target.read_text(encoding="utf-8"))) == 30


def test_zero_shot_file_with_concept_paths_is_rejected(iglue_sample, tmp_path):
    source = iglue_sample / "datasets/marvl/few_shot/annotations/marvl-id_train10x2.jsonl"
    copy = tmp_path / "marvl-id.jsonl"
    shutil.copy(source, copy)
    entries = convert_marvl_file(copy, few_shot=False)
    assert entries[0] == {"source": [str(copy), 1], "error": "zero-shot left_img '39-Panci/39-n-5.jpg' should be a "
                          "bare file name (few-shot files carry concept/file); is this a few-shot file in a zero-shot "
                          "folder?"}


def test_bad_label_and_missing_folder(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"caption": "c", "label": "yes", "left_img": "a.jpg", "right_img": "b.jpg",
                                "language": "id", "concept": "1-x"}) + "\n")
    assert convert_marvl_file(path, few_shot=False)[0]["error"].startswith("label 'yes'")
    with pytest.raises(AnnotationError, match="no MaRVL annotation files"):
        ensure_marvl(tmp_path / "nothing", tmp_path / "out")


def test_errors_after_conversion_name_the_iglue_line_and_the_cli_lists_them(tmp_path, capsys):
    from dataset.marvl import main

    source = tmp_path / "marvl/zero_shot/annotations/marvl-id.jsonl"
    source.parent.mkdir(parents=True)
    good = {"caption": "ada", "label": True, "left_img": "a.jpg", "right_img": "b.jpg", "language": "id",
            "concept": "1-x"}
    source.write_text(json.dumps(good) + "\n" + json.dumps({**good, "caption": 5}) + "\n{broken\n")
    out = tmp_path / "out"
    assert main(["--marvl-dir", str(tmp_path / "marvl"), "--out-dir", str(out)]) == 1
    assert f"{source}:3: malformed JSON" in capsys.readouterr().err
    images = tmp_path / "images"
    for name in ("a.jpg", "b.jpg"):
        (images / "marvl-images/id/images/1-x").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(images / "marvl-images/id/images/1-x" / name)
    with pytest.raises(AnnotationError, match=rf"{source}:2: sentence must be a string"):
        NLVRDataset(out / "marvl-id.json", images, build_transform("test", RES))


def test_outputs_of_an_older_form_are_converted_again(tmp_path, iglue_sample):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "marvl-id.json"
    target.write_text("[]")
    os.utime(target, (1e10, 1e10))  # newer than its source, but written before entries carried their source line
    ensure_marvl(iglue_sample / "datasets/marvl", out)
    assert json.loads(target.read_text(encoding="utf-8"))[0]["source"][1] == 1
