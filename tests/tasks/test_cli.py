"""Task flags applied to the config."""
import argparse

import pytest

from tasks.cli import add_task_arguments, build_config, key_of_test_files
from tasks.registry import TaskInfo
from utils.config import ConfigError


def parse_task_args(argv, description):
    parser = argparse.ArgumentParser(description=description)
    add_task_arguments(parser)
    return parser.parse_args(argv)


def TaskSpec(name, config, schema, bs_keys=(), unsupported_flags=None):
    return TaskInfo(name, "Toy.py", config, schema, "a toy task", bs_keys=tuple(bs_keys),
                    refuses=unsupported_flags or {})


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


@pytest.mark.parametrize("flags", [["--bs", "0"], ["--epoch", "0"], ["--lr", "-1"], ["--bs", "-8"]])
def test_non_positive_bs_epoch_lr_are_errors_not_ignored(spec, flags):
    with pytest.raises(ConfigError, match=f"{flags[0]} must be positive, got {flags[1]}"):
        build_config(spec, parse_task_args(flags, "toy"), world_size=1)


def test_unsupported_flags_are_errors(tmp_path):
    (tmp_path / "schema.yaml").write_text("base: base/engine.yaml\n")
    spec = TaskSpec("toy", str(tmp_path / "schema.yaml"), str(tmp_path / "schema.yaml"),
                    unsupported_flags={"evaluate": "toy has no evaluation", "fewshot": "no"})
    with pytest.raises(ConfigError, match="task toy does not take --evaluate: toy has no evaluation"):
        build_config(spec, parse_task_args(["--evaluate"], "toy"), world_size=1)
    with pytest.raises(ConfigError, match="does not take --fewshot"):
        build_config(spec, parse_task_args(["--fewshot", "de"], "toy"), world_size=1)
    assert build_config(spec, parse_task_args([], "toy"), world_size=1)["seed"] is not None


@pytest.mark.parametrize("override,message", [
    ("batch_size_train=sixteen", "'batch_size_train' must be an integer (like its default 32), got 'sixteen'"),
    ("optimizer.lr=fast", "'optimizer.lr' must be a number"),
    ("run.progress=3", "'run.progress' must be true or false"),
    ("batch_size_train=1.5", "must be an integer"),
])
def test_wrong_value_types_are_errors_naming_the_key(spec, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config(spec, parse_task_args(["--opts", override], "toy"), world_size=1)


def test_integral_floats_and_ints_for_floats_are_accepted(spec):
    cfg = build_config(spec, parse_task_args(["--opts", "batch_size_train=1e2", "optimizer.lr=1"], "toy"), 1)
    assert cfg["batch_size_train"] == 100 and cfg["optimizer"]["lr"] == 1


def test_an_output_dir_that_is_a_file_is_an_error(spec, tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(ConfigError, match="out exists and is not a folder"):
        build_config(spec, parse_task_args(["--output_dir", str(tmp_path / "out")], "toy"), world_size=1)


def test_run_script_turns_user_errors_into_one_line_and_exit_code_2(caplog, monkeypatch):
    from dataset.checked import AnnotationError
    from tasks.runner import run_script

    monkeypatch.setattr("sys.argv", ["task.py", "--bs", "8"])
    seen = []

    def main(argv):
        seen.append(argv)
        raise AnnotationError("data.jsonl:3: malformed JSON line")

    with caplog.at_level("ERROR"), pytest.raises(SystemExit) as info:
        run_script(main)
    assert info.value.code == 2 and seen == [["--bs", "8"]]
    assert "AnnotationError: data.jsonl:3: malformed JSON line" in caplog.text
    with pytest.raises(SystemExit) as info:
        run_script(lambda argv: None)
    assert info.value.code == 0
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_script(lambda argv: 1 / 0)


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
