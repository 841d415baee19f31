"""Task flags applied to the config."""
import pytest

from utils.cli import TaskSpec, build_config, parse_task_args, key_of_test_files
from utils.config import ConfigError


@pytest.fixture
def spec(tmp_path):
    (tmp_path / "schema.yaml").write_text("base: base/engine.yaml\nbatch_size_train: 32\n")
    (tmp_path / "task.yaml").write_text("base: schema.yaml\nbatch_size_train: 16\n")
    return TaskSpec("toy", str(tmp_path / "task.yaml"), str(tmp_path / "schema.yaml"), bs_keys=["batch_size_train"])


def test_flags_override_config(spec, tmp_path):
    args = parse_task_args(["--bs", "64", "--epoch", "3", "--lr", "5e-5", "--seed", "7", "--evaluate",
                            "--fewshot", "de,100", "--output_dir", str(tmp_path / "o"), "--opts", "run.log_every=5"],
                           "toy")
    cfg = build_config(spec, args, world_size=2)
    assert cfg["batch_size_train"] == 32  # global 64 over 2 processes
    assert cfg["schedular"]["epochs"] == 3
    assert cfg["optimizer"]["lr"] == cfg["schedular"]["lr"] == 5e-5
    assert cfg["seed"] == 7 and cfg["evaluate"] is True and cfg["fewshot"] == "de,100"
    assert cfg["run"]["log_every"] == 5
    assert cfg["output_dir"] == str(tmp_path / "o")


def test_bs_must_divide(spec):
    with pytest.raises(ConfigError, match="not divisible"):
        build_config(spec, parse_task_args(["--bs", "5"], "toy"), world_size=2)


def test_misspelt_override_is_an_error(spec):
    with pytest.raises(ConfigError, match="unknown config key 'run.log_evry'"):
        build_config(spec, parse_task_args(["--opts", "run.log_evry=5"], "toy"), world_size=1)


def test_unknown_flag_is_an_error():
    with pytest.raises(SystemExit):
        parse_task_args(["--nope"], "toy")


@pytest.fixture
def gmt_spec(tmp_path):
    tmp_path = tmp_path / "gmt"
    tmp_path.mkdir()
    (tmp_path / "schema.yaml").write_text("base: base/engine.yaml\ntest_file: null\ntest_languages: null\n"
                                          "gmt_test_file: null\n")
    (tmp_path / "task.yaml").write_text("base: schema.yaml\ntest_file: human/{lang}/test.jsonl\n"
                                        "test_languages: [en, de, ja]\ngmt_test_file: mt/{lang}/test_gmt.jsonl\n")
    return TaskSpec("toy", str(tmp_path / "task.yaml"), str(tmp_path / "schema.yaml"))


def test_gmt_swaps_in_the_machine_translated_test_files_without_english(gmt_spec):
    cfg = build_config(gmt_spec, parse_task_args(["--gmt"], "toy"), world_size=1)
    assert cfg["gmt"] is True
    assert cfg[key_of_test_files(cfg)] == "mt/{lang}/test_gmt.jsonl" and cfg["test_languages"] == ["de", "ja"]
    plain = build_config(gmt_spec, parse_task_args([], "toy"), world_size=1)
    assert plain[key_of_test_files(plain)] == "human/{lang}/test.jsonl"
    assert plain["test_languages"] == ["en", "de", "ja"]
    by_opts = build_config(gmt_spec, parse_task_args(["--opts", "gmt=true"], "toy"), world_size=1)
    assert by_opts[key_of_test_files(by_opts)] == "mt/{lang}/test_gmt.jsonl"


def test_gmt_without_translate_test_files_or_with_fewshot_is_an_error(gmt_spec, spec):
    with pytest.raises(ConfigError, match="gmt_test_file"):
        build_config(spec, parse_task_args(["--gmt"], "toy"), world_size=1)
    with pytest.raises(ConfigError, match="--fewshot"):
        build_config(gmt_spec, parse_task_args(["--gmt", "--fewshot", "de,10"], "toy"), world_size=1)
