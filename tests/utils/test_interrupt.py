"""Stop signals (utils/interrupt.py): real signals sent to the processes, a deferred stop in the training loop, the
ranks' agreement on the step to stop at, and an immediate stop outside training."""
import json
import os
import signal

import pytest

from utils import checkpoint as ckpt
from utils.errors import STOPPED_EXIT_CODE, UserError
from utils.interrupt import STOP, RunInterrupted, signal_numbers

from tests.processes import join_group, run_ranks
from tests.utils.toy_task import config, make_trainer


def signalling(batches, rank_to_signal, at_batch, sig):
    """The trainer's batches; rank ``rank_to_signal`` sends itself ``sig`` just before batch ``at_batch`` of epoch 0."""
    def wrapped(epoch, skip):
        for i, batch in enumerate(batches(epoch, skip), start=skip):
            if epoch == 0 and i == at_batch and rank_to_signal is not None:
                os.kill(os.getpid(), sig)
            yield batch
    return wrapped


def _agreeing_worker(rank, world, port, out_dir):
    from utils.dist import cleanup_distributed

    env = join_group(rank, world, port)
    STOP.install(["SIGUSR1"])
    trainer = make_trainer(config(epochs=2), out_dir, env=env, batch_size=4)
    trainer.train_batches = signalling(trainer.train_batches, 1 if rank == 1 else None, 2, signal.SIGUSR1)
    try:
        trainer.fit()
        outcome = {"stopped": False}
    except RunInterrupted as e:
        outcome = {"stopped": True, "step": e.step, "signal": e.signal_name, "checkpoint": e.checkpoint,
                   "code": e.exit_code, "own": STOP.signal_name}
    finally:
        STOP.uninstall()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(outcome, f)
    cleanup_distributed()


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    run_ranks(_agreeing_worker, 2, str(tmp_path))
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(s["stopped"] for s in seen), seen
    assert seen[0]["step"] == seen[1]["step"] and seen[0]["signal"] == seen[1]["signal"] == "SIGUSR1"
    assert seen[0]["own"] is None and seen[1]["own"] == "SIGUSR1"  # rank 0 learnt of it from rank 1
    assert all(s["code"] == STOPPED_EXIT_CODE for s in seen)
    state = ckpt.load_training_state(tmp_path / ckpt.LATEST)
    assert state["step"] == seen[0]["step"] and 3 <= state["step"] < 6 and state["epoch"] == 0  # mid-epoch 0
    assert state["batches_in_epoch"] == state["step"]


def test_one_process_stops_after_the_step_in_progress(tmp_path):
    STOP.install(["SIGTERM"])
    try:
        trainer = make_trainer(config(epochs=2), tmp_path)
        trainer.train_batches = signalling(trainer.train_batches, 0, 3, signal.SIGTERM)
        with pytest.raises(RunInterrupted) as info:
            trainer.fit()
    finally:
        STOP.uninstall()
    assert info.value.step == 4 and info.value.exit_code == STOPPED_EXIT_CODE  # the step under way when it came
    assert "stopped by SIGTERM after step 4" in info.value.message and "--resume latest" in info.value.message
    assert ckpt.load_training_state(tmp_path / ckpt.LATEST)["step"] == 4


def test_outside_training_a_signal_ends_the_run_at_once_with_128_plus_its_number():
    STOP.install(["SIGINT"])
    try:
        with pytest.raises(RunInterrupted) as info:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between two bytecodes of this loop
                pass
    finally:
        STOP.uninstall()
    assert info.value.checkpoint is None and info.value.exit_code == 128 + signal.SIGINT
    assert "before the run had anything to save" in info.value.message
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back
    assert not STOP.requested  # and forgotten: a later run in this process trains


def test_stop_signals_must_be_catchable_signal_names():
    assert signal_numbers(["SIGTERM", "sigusr1"]) == [signal.SIGTERM, signal.SIGUSR1]
    for bad in ("SIGKILL", "SIGFOO"):
        with pytest.raises(UserError, match=f"run.stop_signals: '{bad}'"):
            signal_numbers([bad])
