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


@pytest.mark.parametrize("text, message", [
    ("epochs: 3\noptimizer:\n  lrr: 1\n", r"bad\.yaml:3: unknown config key 'optimizer\.lrr'"),
    ("epochs: 3\noptimizer: {lr: 1.0e-4, weight_decay: high}\n",
     r"bad\.yaml:2: config key 'optimizer\.weight_decay' must be a number"),
    ("name: y\n\nimages: 3\n", r"bad\.yaml:3: config key 'images' must be a mapping"),
    ("epochs: 3\noptimizer:\n  lr: .nan\n", r"bad\.yaml:3: config key 'optimizer\.lr' is nan: NaN and infinite"),
    ("images:\n  batch_size: 8\n  num_workers: -.inf\n", r"bad\.yaml:3: config key 'images\.num_workers' is -inf"),
    ("extra:\n  deep: {x: [1, .inf]}\n", r"bad\.yaml:2: config key 'extra\.deep\.x' is inf"),
    ("epochs: 3\nepochs: 4\n", r"bad\.yaml:2: invalid YAML \(.*duplicate key \"epochs\""),
    ("epochs: [3\n", r"bad\.yaml:2: invalid YAML \(while parsing a flow sequence"),
])
def test_errors_name_file_line_and_dotted_key(files, tmp_path, text, message):
    schema, _, _ = files
    bad = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=message):
        load_config(bad, schema=schema)


def test_a_parent_file_error_names_the_parent_and_its_line(files, tmp_path):
    schema, _, _ = files
    write(tmp_path / "mid.yaml", "base: parent.yaml\n# a comment\nepochs: 4\nimages: {batch_size: 8, workers: 1}\n")
    child = write(tmp_path / "leaf.yaml", "base: mid.yaml\nepochs: 5\n")
    with pytest.raises(ConfigError, match=r"mid\.yaml:4: unknown config key 'images\.workers'"):
        load_config(child, schema=schema)


@pytest.mark.parametrize("override", ["optimizer.lr=.nan", "optimizer.lr=.inf", "extra.values=[1, -.inf]"])
def test_non_finite_override_is_an_error(files, override):
    schema, _, child = files
    with pytest.raises(ConfigError, match=rf"override '{override.replace('[', '.').replace(']', '.')}'.*NaN and "
                                          "infinite numbers are not allowed"):
        load_config(child, [override], schema=schema)


def test_round_trip_loader_reads_what_the_safe_loader_reads():
    from ruamel.yaml import YAML

    from utils.config import CONFIG_ROOT

    files = sorted(CONFIG_ROOT.rglob("*.yaml"))
    assert len(files) > 30
    for path in files:
        with open(path, encoding="utf-8") as f:
            expected = YAML(typ="safe", pure=True).load(f) or {}
        assert repr(read_yaml(path)) == repr(expected), path
