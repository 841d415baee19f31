"""The shared training loop: updates, accumulation, checkpoints, resume equality, DDP equivalence."""
import json
import os

import pytest
import torch

from utils import checkpoint as ckpt
from utils.dist import DistEnv

from tests.processes import join_group, run_ranks
from tests.utils.toy_task import config, make_trainer  # noqa: E402  (tests/utils is on sys.path via importlib mode below)


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fit_trains_logs_and_saves(tmp_path):
    t = make_trainer(config(epochs=2), tmp_path)
    before = params(t.raw_model)
    metrics = t.fit()
    assert t.state.step == 2 * 6 and t.state.epoch == 2
    assert any(not torch.equal(before[k], v) for k, v in params(t.raw_model).items())
    assert "neg_mse" in metrics
    assert (tmp_path / ckpt.LATEST).is_file() and (tmp_path / ckpt.BEST).is_file()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("loss_mse" in x for x in lines) and any("eval/neg_mse" in x for x in lines)


def test_resume_equals_uninterrupted(tmp_path):
    """N steps straight == k steps, a fresh process state, resume, N-k steps (dropout on: RNG must be restored)."""
    full = make_trainer(config(epochs=2), tmp_path / "full")
    full.fit()

    part = make_trainer(config(epochs=2, max_steps=8, ckpt_every_steps=4), tmp_path / "part")
    part.fit()  # stops mid-epoch 1 (6 steps per epoch)
    assert part.state.step == 8 and part.state.epoch == 1 and part.state.batches_in_epoch == 2
    resumed = make_trainer(config(epochs=2), tmp_path / "part")
    torch.manual_seed(1234)  # a "new process": the RNG is wherever it is; resume must restore it
    resumed.resume("latest")
    assert resumed.state.step == 8
    resumed.fit()
    assert resumed.state.step == 12
    a, b = params(full.raw_model), params(resumed.raw_model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_gradient_accumulation_matches_big_batch(tmp_path):
    cfg1 = config(epochs=1)
    cfg2 = config(epochs=1)
    cfg2["accelerator"]["GRAD_ACCUMULATE_STEPS"] = 2
    big = make_trainer(cfg1, tmp_path / "a", batch_size=16, dropout=0.0)
    small = make_trainer(cfg2, tmp_path / "b", batch_size=8, dropout=0.0)
    # same data order: the sampler order depends only on seed and epoch
    big.fit()
    small.fit()
    assert big.state.step == small.state.step == 3
    for k, v in params(big.raw_model).items():
        torch.testing.assert_close(v, params(small.raw_model)[k], rtol=1e-5, atol=1e-6)


def test_nonfinite_loss_stops_the_run(tmp_path):
    t = make_trainer(config(epochs=1), tmp_path)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        t.backward({"loss_x": torch.tensor(float("nan"), requires_grad=True)})


def test_model_snapshots_follow_ckpt_frequent_and_ckpt_frequent_step(tmp_path):
    cfg = config(epochs=3)
    cfg.update(ckpt_frequent=2, ckpt_frequent_step=4)
    t = make_trainer(cfg, tmp_path)
    t.fit()  # 6 steps per epoch, 18 in all
    names = sorted(p.name for p in tmp_path.glob("model_state_*.th"))
    # the original's names: epochs counted from 0, steps as its 0-based global_step
    assert names == ["model_state_epoch_1.th", "model_state_step_11.th", "model_state_step_15.th",
                     "model_state_step_3.th", "model_state_step_7.th"]
    snapshot = torch.load(tmp_path / "model_state_step_15.th", weights_only=True)
    assert set(snapshot) == {"model", "config"} and snapshot["config"]["ckpt_frequent"] == 2
    assert set(snapshot["model"]) == set(t.raw_model.state_dict())


def test_resume_warns_when_the_run_shape_changed(tmp_path, caplog):
    part = make_trainer(config(epochs=2, max_steps=4), tmp_path)
    part.fit()
    assert ckpt.load_training_state(tmp_path / ckpt.LATEST)["run_shape"] == {
        "world_size": 1, "steps_per_epoch": 6, "total_steps": 12}
    same = make_trainer(config(epochs=2), tmp_path)
    with caplog.at_level("WARNING"):
        same.resume("latest")
    assert "do not carry over" not in caplog.text
    bigger_batches = make_trainer(config(epochs=2), tmp_path, batch_size=16)  # 3 steps per epoch
    with caplog.at_level("WARNING"):
        bigger_batches.resume("latest")
    assert "'steps_per_epoch': 6" in caplog.text and "'steps_per_epoch': 3" in caplog.text
    assert "do not carry over" in caplog.text


def test_resume_of_another_model_names_the_file(tmp_path):
    t = make_trainer(config(epochs=1), tmp_path)
    t.fit()
    state = torch.load(tmp_path / ckpt.LATEST, weights_only=True)
    state["model"]["extra_head.weight"] = torch.zeros(1)
    ckpt.atomic_torch_save(state, tmp_path / "other.pth")
    with pytest.raises(ckpt.CheckpointError, match=r"other.pth: its weights do not fit this ToyModel .*extra_head"):
        make_trainer(config(epochs=1), tmp_path).resume(tmp_path / "other.pth")


def test_resuming_a_finished_run_warns(tmp_path, caplog):
    make_trainer(config(epochs=1), tmp_path).fit()
    with caplog.at_level("WARNING"):
        make_trainer(config(epochs=1), tmp_path).resume("latest")
    assert "nothing left to train" in caplog.text


def test_resume_rejects_plain_weights(tmp_path):
    t = make_trainer(config(epochs=1), tmp_path)
    ckpt.atomic_torch_save({"model": t.raw_model.state_dict()}, tmp_path / "weights.pth")
    with pytest.raises(ckpt.CheckpointError, match="not a training checkpoint"):
        t.resume(tmp_path / "weights.pth")


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    t = make_trainer(config(epochs=1), tmp_path)
    t.fit()
    state = ckpt.load_training_state(tmp_path / ckpt.LATEST)
    assert state["epoch"] == 1 and state["step"] == 6
    for k, v in t.raw_model.state_dict().items():
        assert torch.equal(state["model"][k], v)
    assert state["optimizer"]["state"]  # AdamW moments are there
    assert not list(tmp_path.glob(".*.tmp*"))  # no temporary files left behind


def _ddp_worker(rank, world, port, out_dir):
    from utils.dist import cleanup_distributed

    env = join_group(rank, world, port)
    t = make_trainer(config(epochs=1), out_dir, env=env, batch_size=4, dropout=0.0)
    t.fit()
    if rank == 0:
        torch.save(t.raw_model.state_dict(), os.path.join(out_dir, "final.pt"))
    cleanup_distributed()


def test_ddp_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    single = make_trainer(config(epochs=1), tmp_path / "single", batch_size=8, dropout=0.0)
    single.fit()
    run_ranks(_ddp_worker, 2, str(tmp_path / "ddp"))
    got = torch.load(tmp_path / "ddp" / "final.pt", weights_only=True)
    for k, v in params(single.raw_model).items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=k)


def _ddp_resume_worker(rank, world, port, out_dir):
    from utils.dist import cleanup_distributed

    env = join_group(rank, world, port)
    finals = {}
    for name, run in (("full", {}), ("part", {"max_steps": 8, "ckpt_every_steps": 4})):
        t = make_trainer(config(epochs=2, **run), os.path.join(out_dir, name), env=env, batch_size=4)
        torch.manual_seed(100 + rank)  # each rank its own dropout stream, as seed + rank gives in a real run
        t.fit()
        finals[name] = t
    assert finals["part"].state.step == 8
    resumed = make_trainer(config(epochs=2), os.path.join(out_dir, "part"), env=env, batch_size=4)
    torch.manual_seed(1234)  # a new process's RNG, the same on every rank: the resume must restore each rank's own
    resumed.resume("latest")
    resumed.fit()
    if rank == 0:
        torch.save({"full": finals["full"].raw_model.state_dict(), "resumed": resumed.raw_model.state_dict()},
                   os.path.join(out_dir, "final.pt"))
    cleanup_distributed()


def test_two_process_resume_restores_each_ranks_rng(tmp_path):
    """With dropout on, the ranks draw different masks; a resume that gave every rank rank 0's RNG state (or left
    it where it is) would not end where the uninterrupted two-process run does."""
    run_ranks(_ddp_resume_worker, 2, str(tmp_path))
    got = torch.load(tmp_path / "final.pt", weights_only=True)
    for k, v in got["full"].items():
        torch.testing.assert_close(got["resumed"][k], v, rtol=0, atol=0, msg=k)
    state = ckpt.load_training_state(tmp_path / "part" / ckpt.LATEST)
    assert len(state["rng_per_rank"]) == 2
    assert not torch.equal(state["rng_per_rank"][0]["torch"], state["rng_per_rank"][1]["torch"])


def test_rng_state_for_rank_when_the_world_size_changes():
    one, two = {"torch": torch.tensor([1])}, {"torch": torch.tensor([2])}
    assert ckpt.rng_state_for_rank({"rng": one, "rng_per_rank": [one, two]}, 1, 2) is two
    assert ckpt.rng_state_for_rank({"rng": one, "rng_per_rank": [one]}, 0, 1) is one
    assert ckpt.rng_state_for_rank({"rng": one, "rng_per_rank": None}, 0, 1) is one  # older one-process checkpoint
    assert ckpt.rng_state_for_rank({"rng": one, "rng_per_rank": [one, two]}, 0, 4) is None
    assert ckpt.rng_state_for_rank({"rng": one, "rng_per_rank": None}, 1, 2) is None  # older: rank 0's state only


def _compiled_ddp_worker(rank, world, port, out_dir):
    from utils.dist import cleanup_distributed

    env = join_group(rank, world, port)
    cfg = config(epochs=1)
    cfg["run"]["compile"] = True
    cfg["accelerator"]["GRAD_ACCUMULATE_STEPS"] = 2
    t = make_trainer(cfg, out_dir, env=env, batch_size=4, dropout=0.0)
    # compile(DDP(model)): dynamo splits the graph at DDP's buckets (all-reduce overlaps the backward)
    assert isinstance(t.model._orig_mod, torch.nn.parallel.DistributedDataParallel)
    t.fit()
    if rank == 0:
        torch.save(t.raw_model.state_dict(), os.path.join(out_dir, "final.pt"))
    cleanup_distributed()


def test_compiled_ddp_with_accumulation_equals_one_process(tmp_path):
    """run.compile under DDP: the compiled DDP model, with no_sync on the accumulation steps, ends where one process
    on the global batch does."""
    cfg = config(epochs=1)
    cfg["accelerator"]["GRAD_ACCUMULATE_STEPS"] = 2
    single = make_trainer(cfg, tmp_path / "single", batch_size=8, dropout=0.0)
    single.fit()
    run_ranks(_compiled_ddp_worker, 2, str(tmp_path / "ddp"), timeout=600)
    got = torch.load(tmp_path / "ddp" / "final.pt", weights_only=True)
    for k, v in params(single.raw_model).items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_run_grad_checkpointing_reaches_the_model(tmp_path):
    from tests.utils.toy_task import ToyModel
    from utils.engine import enable_grad_checkpointing

    calls = []
    model = ToyModel()
    model.set_grad_checkpointing = lambda enable=True: calls.append(enable)
    enable_grad_checkpointing(model)
    assert calls == [True]
    with pytest.raises(ValueError, match="run.grad_checkpointing.*ToyModel has no set_grad_checkpointing"):
        make_trainer(config(epochs=1, grad_checkpointing=True), tmp_path)
