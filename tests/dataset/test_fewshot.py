"""``--fewshot`` specs resolved to files, checked against the real IGLUE sample laid out under a data root."""
import pytest

from dataset.fewshot import parse_fewshot, resolve_fewshot
from dataset.marvl import ensure_marvl


@pytest.fixture
def data_root(iglue_sample, tmp_path):
    (tmp_path / "iglue").symlink_to(iglue_sample)  # <root>/iglue/datasets/... as in a clone of e-bug/iglue
    ensure_marvl(iglue_sample / "datasets/marvl", tmp_path / "data/marvl")
    return tmp_path


def test_xvnli_and_xflickrco_take_language_and_shots(data_root):
    files = resolve_fewshot("xvnli", "ar,48", data_root)
    assert files.train_file == data_root / "iglue/datasets/XVNLI/annotations/ar/train_48.jsonl"
    assert files.eval_file == data_root / "iglue/datasets/XVNLI/annotations/ar/test.jsonl"
    assert (files.language, files.shots, files.max_images) == ("ar", "48", None)
    files = resolve_fewshot("xflickrco", "de,100", data_root)
    assert files.train_file == data_root / "iglue/datasets/xFlickrCO/annotations/de/train_100.jsonl"
    assert files.eval_file == data_root / "iglue/datasets/xFlickrCO/annotations/de/test.jsonl"


def test_nlvr_takes_a_bare_language(data_root):
    files = resolve_fewshot("nlvr", "id", data_root)
    assert files.train_file == data_root / "data/marvl/marvl-id_train10x2.json"
    assert files.eval_file == data_root / "data/marvl/marvl-id.json"


def test_gqa_takes_a_bare_language_and_names_the_missing_test_file(data_root):
    files = resolve_fewshot("gqa", "de", data_root, check_exists=False)
    assert files.train_file == data_root / "iglue/datasets/xGQA/annotations/few_shot/de/train_48.json"
    assert files.eval_file == data_root / "iglue/datasets/xGQA/annotations/few_shot/de/test.json"
    assert files.train_file.is_file()
    # the sample has no xGQA test files
    with pytest.raises(FileNotFoundError, match="few_shot/de/test.json does not exist"):
        resolve_fewshot("gqa", "de", data_root)


def test_caption_json_tasks_limit_images(tmp_path):
    files = resolve_fewshot("itr_multi30k", "de,100", tmp_path, check_exists=False)
    assert files.train_file == tmp_path / "data/finetune/multi30k/train.de.json" and files.max_images == 100
    assert files.eval_file == tmp_path / "data/finetune/multi30k/test_2016_flickr.de.json"
    assert resolve_fewshot("itr_coco", "zh,10", tmp_path, False).eval_file == tmp_path / "data/finetune/mscoco/zh.test.json"
    assert resolve_fewshot("itr_coco", "ja,10", tmp_path, False).eval_file == tmp_path / "data/finetune/mscoco/ja.1k_test.json"


@pytest.mark.parametrize("task, spec, message", [
    ("xvnli", "ar", "needs <lang>,<N>"),
    ("xflickrco", "de,many", "should look like 48 or 10x2"),
    ("xvnli", "ar,48,1", "expected <lang> or <lang>,<N>"),
    ("gqa", "1,2", "not a language code"),
    ("wit", "ja,10", "IGLUE has no WIT few-shot split"),
    ("pretrain", "de", "unknown task"),
    ("itr_coco", "ja,10x2", "number of images"),
])
def test_bad_specs_are_explained(tmp_path, task, spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_fewshot(task, spec, tmp_path, check_exists=False)


def test_missing_train_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="XVNLI/annotations/es/train_48.jsonl does not exist"):
        resolve_fewshot("xvnli", "es,48", tmp_path)


def test_parse_fewshot_defaults():
    assert parse_fewshot("id", shots_required=False, default_shots="10x2") == ("id", "10x2")
    assert parse_fewshot(" de , 100 ", shots_required=True) == ("de", "100")
