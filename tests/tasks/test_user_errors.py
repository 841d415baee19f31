"""Every task, every kind of user error: one logged line naming what to fix, exit code 2, no traceback; and run.py
adds no launcher noise after it. The hub check fails fast when the hub cannot be reached."""
import importlib
import logging
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub
import pytest

from tasks.environment import resolve_text_encoder
from tasks.registry import TASKS
from tasks.runner import run_script
from utils.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CLOSED_PORT_ENDPOINT = "http://127.0.0.1:9"   # nothing listens there: every request is refused at once


def tiny_config(name: str) -> str:
    config = ROOT / "configs" / "tiny" / f"{name}.yaml"
    return str(config if config.is_file() else ROOT / TASKS[name].config)


ERRORS = {
    "unknown_key": (["--opts", "run.nosuchkey=1"], "unknown config key 'run.nosuchkey'"),
    "missing_checkpoint": (["--checkpoint", "/nonexistent/cclm_4m.th"], "--checkpoint /nonexistent/cclm_4m.th: no such"),
    "text_encoder_not_found": (["--opts", "text_encoder=nowhere/xlm-roberta-large"],
                               "config key 'text_encoder': 'nowhere/xlm-roberta-large' is no folder"),
}


@pytest.mark.parametrize("error", sorted(ERRORS))
@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_user_error_is_one_line_and_exit_code_2(task, error, tmp_path, monkeypatch, caplog):
    flags, expected = ERRORS[error]
    if task == "demo" and error == "missing_checkpoint":
        flags, expected = ["--checkpoint", "x.th"], "task demo does not take --checkpoint"
    script = importlib.import_module(TASKS[task].script.removesuffix(".py"))
    monkeypatch.setattr(sys, "argv", [TASKS[task].script, "--task", task, "--config", tiny_config(task),
                                      "--output_dir", str(tmp_path), *flags])
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exited:
        run_script(script.main)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert exited.value.code == 2 and len(errors) == 1, [r.getMessage() for r in errors]
    assert expected in errors[0].getMessage() and errors[0].exc_info is None


def test_the_hub_check_fails_fast_without_network(monkeypatch, tmp_path):
    """A name that is no local folder is looked up on the hub once (no retries): refused at once, one line."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", CLOSED_PORT_ENDPOINT)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="text_encoder.*model hub cannot provide it.*--opts text_encoder=PATH") as e:
        resolve_text_encoder("data/xlm-roberta-large", tmp_path)
    assert time.monotonic() - started < 5 and "\n" not in str(e.value)


def test_offline_mode_fails_without_asking_the_hub(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        resolve_text_encoder("xlm-roberta-large", tmp_path)
    (tmp_path / "enc").mkdir()
    assert resolve_text_encoder("enc", tmp_path) == str(tmp_path / "enc")


def test_run_py_adds_no_launcher_noise_after_a_user_error(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), "--task", "xvnli", "--dist", "cpu:2", "--config",
                           tiny_config("xvnli"), "--output_dir", str(tmp_path), "--opts", "nosuchkey=1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 2 and lines == ["ConfigError: override 'nosuchkey=1': unknown config key 'nosuchkey'"]
