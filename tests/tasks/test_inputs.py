"""tasks/inputs.py: the inputs a fine-tuning config names, checked against the synthetic world's manifest (the files
its generator wrote, in the real layouts) and against an empty data root."""
import json
from pathlib import Path

import pytest

from tasks.environment import resolve_data_root
from tasks.inputs import Input, built_from, check_inputs, config_inputs
from tasks.registry import task_info
from utils.config import load_config

ROOT = Path(__file__).resolve().parents[2]
WORLD = {"synthetic": {"images": 200, "seed": 0}}
TINY = {"xvnli": "configs/tiny/xvnli.yaml", "gqa": "configs/tiny/gqa.yaml", "nlvr": "configs/tiny/nlvr.yaml",
        "xflickrco": "configs/tiny/xflickrco.yaml", "wit": "configs/tiny/wit.yaml",
        "itr_multi30k": "configs/tiny/itr_multi30k.yaml", "itr_coco": "configs/tiny/itr_coco.yaml"}
FULL = {"xvnli": "configs/xvnli/xvnli.yaml", "gqa": "configs/gqa/gqa.yaml", "nlvr": "configs/nlvr/nlvr.yaml",
        "xflickrco": "configs/xflickrco/xflickrco.yaml", "wit": "configs/wit/wit.yaml",
        "itr_multi30k": "configs/retrieval/multi30k_en.yaml", "itr_coco": "configs/retrieval/coco_en.yaml"}


@pytest.fixture(scope="module")
def world():
    return resolve_data_root(WORLD)


def task_config(task, path, *opts):
    return load_config(ROOT / path, list(opts), schema=ROOT / task_info(task).schema)


@pytest.mark.parametrize("task", sorted(TINY))
def test_every_file_a_tiny_config_names_is_one_the_world_wrote(task, world):
    written = set(json.loads((world / "manifest.json").read_text(encoding="utf-8"))["files"])
    inputs = config_inputs(task_config(task, TINY[task]), world)
    files = [i for i in inputs if i.kind == "file"]
    assert files and all(i.path in written or (i.made_from and i.made_from[0].path in written) for i in files), \
        [i.path for i in files if i.path not in written]
    assert all((world / i.path).is_dir() for i in inputs if i.kind == "folder")
    assert all(s.found for s in check_inputs(inputs, world))


@pytest.mark.parametrize("task", sorted(FULL))
def test_full_configs_on_the_world_lack_only_other_languages_and_the_text_encoder(task, world):
    """The full configs name the real layout: over the synthetic world (real names, six languages) only the
    languages the world lacks and data/xlm-roberta-large are missing."""
    languages = json.loads((world / "manifest.json").read_text(encoding="utf-8"))["params"]["languages"]
    statuses = check_inputs(config_inputs(task_config(task, FULL[task]), world), world)
    missing = [m for s in statuses for m in s.missing]
    for item in missing:
        language = item.key.split(".")[-1] if item.key.startswith(("test_file.", "val_file.")) else None
        if item.key in ("marvl_image_root", "marvl_dir") or item.key.startswith("wit_preproc.annotations"):
            language = Path(item.path).name.split(".")[0].split("-")[-1].split("_")[-1]
        assert item.key == "text_encoder" or (language and language not in languages), item
    assert any(s.found for s in statuses) and any(m.key == "text_encoder" for m in missing)


def test_an_empty_data_root_misses_every_input_and_built_files_name_their_sources(tmp_path):
    config = task_config("nlvr", FULL["nlvr"])
    statuses = check_inputs(config_inputs(config, tmp_path), tmp_path)
    assert statuses and not any(s.found for s in statuses)
    by_path = {s.input.path: s for s in statuses}
    marvl = by_path["data/marvl/marvl-sw.json"]
    assert [m.path for m in marvl.missing] == ["iglue/datasets/marvl/zero_shot/annotations/marvl-sw.jsonl"]
    assert by_path["images/marvl-images/ta"].input.kind == "folder"
    wit = {s.input.path: s for s in check_inputs(config_inputs(task_config("wit", FULL["wit"]), tmp_path), tmp_path)}
    assert [m.path for m in wit["data/wit/annotations-bs64/test_ko.jsonl"].missing] == [
        "iglue/datasets/wit/annotations/test_ko.jsonl", "images/wit_test"]
    assert [m.path for m in wit["data/wit/annotations-bs64/train_en.jsonl"].missing][1] == \
        "images/image_data_train/image_pixels"


def test_a_built_file_counts_as_found_when_its_sources_are_there(tmp_path):
    config = task_config("wit", FULL["wit"])
    (tmp_path / "iglue/datasets/wit/annotations").mkdir(parents=True)
    (tmp_path / "iglue/datasets/wit/annotations/test_ar.jsonl.zip").write_bytes(b"PK")  # IGLUE ships zips
    (tmp_path / "images/wit_test").mkdir(parents=True)
    (tmp_path / "images/wit_test/part-0.csv").write_text("url\tpixels\n")
    item = Input("test_file.ar", "data/wit/annotations-bs64/test_ar.jsonl",
                 made_from=built_from(config, "data/wit/annotations-bs64/test_ar.jsonl"))
    assert check_inputs([item], tmp_path)[0].found
    (tmp_path / "images/wit_test/part-0.csv").unlink()  # an empty folder is a missing folder
    assert [m.path for m in check_inputs([item], tmp_path)[0].missing] == ["images/wit_test"]
