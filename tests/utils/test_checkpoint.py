"""Checkpoint files (utils/checkpoint.py): one-line errors for unusable files, the pickle refusal, and the best file
re-derived from the commit record (checkpoint_latest.pth) after a crash between the two writes."""
import os

import pytest
import torch

from utils import checkpoint as ckpt


class Payload:
    """What a malicious checkpoint would carry: unpickling it calls os.system."""

    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_an_unsafe_pickle_is_refused_and_never_loaded(tmp_path, capfd):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": Payload()}, path)
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load_file(path)
    message = str(info.value)
    assert message.startswith(f"{path} is unsafe to load") and "it names posix.system" in message
    assert "weights_only" not in message and "\n" not in message
    assert "this must never run" not in capfd.readouterr().out


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_checkpoint_is_one_line_naming_the_file(tmp_path, damage):
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.zeros(1000)}}, good)
    path = tmp_path / "bad.pth"
    path.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2] if damage == "truncated" else b"not a file")
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load_file(path)
    message = str(info.value)
    assert message.startswith(f"{path} cannot be loaded: it is damaged or incomplete") and "use another checkpoint" in message
    assert "\n" not in message and "weights_only" not in message


def test_a_missing_checkpoint_names_it(tmp_path):
    with pytest.raises(ckpt.MissingCheckpointError, match="checkpoint not found: .*nope.pth"):
        ckpt.load_file(tmp_path / "nope.pth")


def state_at(step, best_step, value):
    return {"model": {"w": torch.full((2,), float(value))}, "step": step, "epoch": step, "config": None,
            "best": {"acc": 1.0, "epoch": best_step, "step": best_step}, "evaluations": None}


def test_a_best_file_missing_after_a_crash_is_re_derived_from_latest(tmp_path):
    state = state_at(8, 8, 3.0)  # the crash came after latest (best = its own step 8) and before the best file
    note = ckpt.reconcile_best(tmp_path, state, 8)
    assert "re-derived for the best evaluation (step 8)" in note
    best = torch.load(tmp_path / ckpt.BEST, weights_only=True)
    assert best["step"] == 8 and torch.equal(best["model"]["w"], state["model"]["w"])
    assert ckpt.reconcile_best(tmp_path, state, 8) is None  # now they agree


def test_an_older_best_file_is_replaced_by_latest_when_latest_is_the_best(tmp_path):
    ckpt.atomic_torch_save(ckpt.best_state(state_at(4, 4, 1.0)), tmp_path / ckpt.BEST)
    note = ckpt.reconcile_best(tmp_path, state_at(8, 8, 3.0), 8)
    assert "(it held step 4)" in note
    assert torch.load(tmp_path / ckpt.BEST, weights_only=True)["model"]["w"][0] == 3.0


def test_a_best_file_of_another_step_is_moved_aside_or_re_derived_from_a_step_file(tmp_path):
    ckpt.atomic_torch_save(ckpt.best_state(state_at(12, 12, 5.0)), tmp_path / ckpt.BEST)  # an abandoned future
    note = ckpt.reconcile_best(tmp_path, state_at(8, 4, 3.0), 4)  # a resume from step 8, whose best is step 4
    assert "held step 12" in note and "moved to checkpoint_best.step12.pth" in note
    assert not (tmp_path / ckpt.BEST).exists() and (tmp_path / "checkpoint_best.step12.pth").is_file()

    ckpt.atomic_torch_save(state_at(4, 4, 2.0), tmp_path / "checkpoint_step_4.pth")
    assert "re-derived" in ckpt.reconcile_best(tmp_path, state_at(8, 4, 3.0), 4)
    assert torch.load(tmp_path / ckpt.BEST, weights_only=True)["model"]["w"][0] == 2.0


def test_a_failed_checkpoint_write_removes_its_temporary_file_and_keeps_the_previous_one(tmp_path):
    path = tmp_path / ckpt.LATEST
    ckpt.atomic_torch_save({"step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        ckpt.atomic_torch_save({"step": 2, "x": Unpicklable()}, path)
    assert [p.name for p in tmp_path.iterdir()] == [ckpt.LATEST]
    assert torch.load(path, weights_only=True)["step"] == 1
