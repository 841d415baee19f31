"""Config loading: base inheritance, overrides, unknown keys, dumping."""
import pytest

from utils.config import ConfigError, dump_config, load_config, read_yaml


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path):
    schema = write(tmp_path / "schema.yaml", "optimizer: {lr: 1.0e-4, weight_decay: 0.01}\nepochs: 3\n"
                                             "images: {batch_size: 8, num_workers: 2}\nextra: {}\nname: x\n")
    parent = write(tmp_path / "parent.yaml", "base: schema.yaml\noptimizer: {lr: 2.0e-4}\nepochs: 5\n")
    child = write(tmp_path / "child.yaml", "base: parent.yaml\nepochs: 7\nimages: {batch_size: 16}\n")
    return schema, parent, child


def test_base_chain_child_wins_and_mappings_merge(files):
    schema, _, child = files
    cfg = load_config(child, schema=schema)
    assert cfg["epochs"] == 7
    assert cfg["optimizer"] == {"lr": 2e-4, "weight_decay": 0.01}
    assert cfg["images"] == {"batch_size": 16, "num_workers": 2}
    assert "base" not in cfg


def test_override_wins_and_parses_types(files):
    schema, _, child = files
    cfg = load_config(child, ["optimizer.lr=3e-5", "images.num_workers=0", "name=hello", "extra.anything=[1, 2]"],
                      schema=schema)
    assert cfg["optimizer"]["lr"] == pytest.approx(3e-5)
    assert cfg["images"]["num_workers"] == 0
    assert cfg["name"] == "hello"
    assert cfg["extra"] == {"anything": [1, 2]}


def test_unknown_key_in_file_names_key_and_file(files, tmp_path):
    schema, _, _ = files
    bad = write(tmp_path / "bad.yaml", "base: parent.yaml\noptimizer: {lrr: 1}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'optimizer\.lrr'.*did you mean 'lr'"):
        load_config(bad, schema=schema)


def test_unknown_key_in_override_is_an_error(files):
    schema, _, child = files
    with pytest.raises(ConfigError, match="unknown config key 'epoch'"):
        load_config(child, ["epoch=3"], schema=schema)


def test_malformed_override_and_missing_file(files, tmp_path):
    schema, _, child = files
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(child, ["epochs"], schema=schema)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", schema=schema)


def test_mapping_expected(files, tmp_path):
    schema, _, _ = files
    bad = write(tmp_path / "bad.yaml", "images: 3\n")
    with pytest.raises(ConfigError, match="'images' must be a mapping"):
        load_config(bad, schema=schema)


def test_circular_base(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")


def test_dump_round_trip(files, tmp_path):
    schema, _, child = files
    cfg = load_config(child, schema=schema)
    dump_config(cfg, tmp_path / "out" / "config.yaml")
    assert read_yaml(tmp_path / "out" / "config.yaml") == cfg
