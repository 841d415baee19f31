import json
import math
from pathlib import Path

import pytest
import torch

from utils.logging import RunningMeans, append_jsonl


def test_running_means_average_tensors_and_numbers_with_weights():
    meters = RunningMeans()
    meters.update({"loss": torch.tensor(1.0), "lr": 0.5})
    meters.update({"loss": torch.tensor([4.0])}, n=2)  # one-element tensors of any shape
    meters.update({"lr": 1.5})
    assert meters.means() == pytest.approx({"loss": 3.0, "lr": 1.0})
    assert meters.counts == {"loss": 3, "lr": 2}


def test_running_means_keep_tensor_sums_on_their_device_until_read():
    meters = RunningMeans()
    for value in (0.1, 0.2, 0.3):
        meters.update({"loss": torch.tensor(value, requires_grad=True) * 1})
    assert isinstance(meters.sums["loss"], torch.Tensor) and not meters.sums["loss"].requires_grad
    assert isinstance(meters.means()["loss"], float)
    assert meters.means()["loss"] == pytest.approx(0.2)


def test_running_means_with_tensor_weights_skip_unapplied_steps():
    meters = RunningMeans()
    for norm in (2.0, float("inf"), 4.0):  # an fp16 step the scaler skipped has an inf gradient norm
        norm = torch.tensor(norm)
        finite = torch.isfinite(norm)
        meters.update({"grad_norm": torch.where(finite, norm, 0.0)}, n=finite)
    assert meters.means() == {"grad_norm": 3.0}
    meters.reset()
    meters.update({"grad_norm": torch.tensor(0.0)}, n=torch.tensor(False))
    assert meters.means() == {"grad_norm": 0.0}  # every step skipped: no NaN


def test_running_means_reject_a_tensor_that_is_not_a_scalar():
    with pytest.raises(RuntimeError):
        RunningMeans().update({"loss": torch.ones(2)})


def test_running_means_reset_forgets_everything():
    meters = RunningMeans()
    meters.update({"loss": torch.tensor(2.0)})
    meters.reset()
    assert meters.means() == {} and not meters.counts


def test_append_jsonl_writes_plain_numbers_and_names_non_finite_values(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 1, "loss": torch.tensor(0.25)})
    append_jsonl(path, {"step": 2, "loss": math.inf})
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"step": 1, "loss": 0.25}, {"step": 2, "loss": "inf"}]


def test_a_resume_keeps_each_step_once_in_the_metrics(tmp_path):
    from utils.logging import truncate_jsonl_after_step

    path = tmp_path / "metrics.jsonl"
    for step in (1, 2, 3, 4):
        append_jsonl(path, {"step": step, "loss": 1.0})
    append_jsonl(path, {"epoch": 0, "step": 4, "eval/acc": 0.5})
    with open(path, "a") as f:
        f.write('{"step": 5, "lo')  # a row cut short by the kill
    assert truncate_jsonl_after_step(path, 3) == 3  # steps 4 (train and eval rows) and the cut row
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    assert truncate_jsonl_after_step(path, 3) == 0


def test_a_failed_append_leaves_the_metrics_file_as_it_was(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 1})
    before = path.read_bytes()
    code = ("import resource, sys; from utils.logging import append_jsonl; "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) + 10}, {len(before) + 10}))\n"
            "try:\n    append_jsonl(sys.argv[1], {'step': 2, 'text': 'x' * 100})\n"
            "except OSError as e:\n    print(e.errno)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    assert out == "27"  # EFBIG: the file-size limit
    assert path.read_bytes() == before


def test_each_start_of_a_run_is_marked_in_its_log(tmp_path):
    import logging

    from utils.logging import START_MARKER, setup_logging

    for _ in range(2):
        setup_logging(tmp_path, 0)
        logging.getLogger("x").info("a line")
    setup_logging(None, 0)
    text = (tmp_path / "log.txt").read_text()
    assert text.count(START_MARKER) == 2 and text.index(START_MARKER) == 0 and "pid" in text
