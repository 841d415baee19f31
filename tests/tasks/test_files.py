"""Config-named data files: one or many paths, per-language mappings and {lang} templates, errors naming the key."""
from pathlib import Path

import pytest

from tasks.environment import resolve_data_root
from tasks.files import as_list, existing_file, language_files, optional_language_file
from utils.config import ConfigError


def test_language_files_mapping_template_and_discovery(tmp_path):
    for lang in ("de", "en", "ja"):
        (tmp_path / lang).mkdir()
        (tmp_path / lang / "test.jsonl").write_text("")
    assert list(language_files("{lang}/test.jsonl", None, tmp_path, "test_file")) == ["en", "de", "ja"]
    assert language_files("{lang}/test.jsonl", ["ja"], tmp_path, "test_file") == {"ja": tmp_path / "ja/test.jsonl"}
    mapping = {"en": "a.json", "zh": "b.json"}
    for name in mapping.values():
        (tmp_path / name).write_text("[]")
    assert language_files(mapping, None, tmp_path, "val_file") == {"en": tmp_path / "a.json", "zh": tmp_path / "b.json"}
    assert list(language_files(mapping, ["zh"], tmp_path, "val_file")) == ["zh"]
    with pytest.raises(ConfigError, match=r"'val_file' has no file for language\(s\) \['fr'\]"):
        language_files(mapping, ["fr"], tmp_path, "val_file")
    with pytest.raises(FileNotFoundError, match=r"'test_file': .*fr/test\.jsonl does not exist"):
        language_files("{lang}/test.jsonl", ["en", "fr"], tmp_path, "test_file")
    with pytest.raises(FileNotFoundError, match=r"'val_file': .*c\.json does not exist"):
        language_files({"cs": "c.json"}, None, tmp_path, "val_file")
    with pytest.raises(ConfigError, match="template with {lang}"):
        language_files("en/test.jsonl", None, tmp_path, "test_file")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        language_files("{lang}/dev.jsonl", None, tmp_path, "test_file")


def test_language_files_finds_every_world_language_english_first():
    world = resolve_data_root({"synthetic": {"images": 200, "seed": 0}})
    files = language_files("iglue/datasets/XVNLI/annotations/{lang}/test.jsonl", None, world, "test_file")
    assert list(files) == ["en", "cs", "de", "fr", "ja", "zh"]
    assert files["de"] == world / "iglue/datasets/XVNLI/annotations/de/test.jsonl"
    absolute = language_files(str(world / "iglue/datasets/XVNLI/annotations/{lang}/test.jsonl"), None, Path("/"),
                              "test_file")
    assert list(absolute) == list(files)


def test_language_files_skips_names_that_are_not_language_codes(tmp_path):
    for name in ("marvl-id.json", "marvl-zh.json", "marvl-id_train10x2.json", "marvl-zh_gmt.json"):
        (tmp_path / name).write_text("[]")
    assert list(language_files("marvl-{lang}.json", None, tmp_path, "test_file")) == ["id", "zh"]


def test_single_files_and_lists(tmp_path):
    (tmp_path / "a.json").write_text("[]")
    assert as_list("a.json", "train_file") == ["a.json"] and as_list(["a", "b"], "k") == ["a", "b"]
    with pytest.raises(ConfigError, match="'train_file' names no file"):
        as_list([], "train_file")
    assert existing_file(tmp_path, "a.json", "val_file") == tmp_path / "a.json"
    with pytest.raises(FileNotFoundError, match=r"config key 'val_file': .*b\.json does not exist"):
        existing_file(tmp_path, "b.json", "val_file")
    assert optional_language_file({"en": "a.json"}, "en", tmp_path) == tmp_path / "a.json"
    assert optional_language_file({"en": "a.json"}, "de", tmp_path) is None
    assert optional_language_file("{lang}.json", "b", tmp_path) is None
