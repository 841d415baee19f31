"""Pre-training end to end on the synthetic world: losses go down, checkpoints, resume, two processes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import Pretrain
from utils.checkpoint import LATEST, load_training_state
from tasks.environment import resolve_data_root

ROOT = Path(__file__).resolve().parents[2]
TINY_4M = str(ROOT / "configs/tiny/pretrain_cclm_4m.yaml")
TINY_3M = str(ROOT / "configs/tiny/pretrain_cclm_3m.yaml")


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    """The first records of one shard per source: a tiny fixed training set the model can fit quickly."""
    world = resolve_data_root({"synthetic": {"images": 200, "seed": 0}})
    out = tmp_path_factory.mktemp("shards")
    for name, src, n in (("it", "image_text", 8), ("pt", "para_text", 8), ("rg", "regions", 4)):
        lines = (world / "pretrain" / src / "part-00000.jsonl").read_text(encoding="utf-8").splitlines()[:n]
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def opts(shards, *extra):
    return ["--opts", "run.progress=false", "run.log_every=1", "run.ckpt_every_steps=0",
            f"train_file=[{shards}/it.jsonl]", f"train_file_regions=[{shards}/rg.jsonl]",
            f"train_file_text=[{shards}/pt.jsonl]", *extra]


def losses_by_name(output_dir):
    rows = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    out = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith("loss_") and "step" in row and not any(k.startswith("eval/") for k in row):
                out.setdefault(key, []).append(value)
    return out


def window_means(values, n=5):
    return sum(values[:n]) / len(values[:n]), sum(values[-n:]) / len(values[-n:])


@pytest.mark.parametrize("config,steps,expected", [
    (TINY_4M, 30, ["loss_tt_ttc", "loss_tt_ttm", "loss_tt_mlm", "loss_mm_img_itc", "loss_mm_img_mlm", "loss_mm_itc",
                   "loss_mm_itm", "loss_mm_mlm"]),
    (TINY_3M, 20, ["loss_tt_ttc", "loss_tt_ttm", "loss_tt_mlm", "loss_mm_img_itc", "loss_mm_img_mlm"]),
])
def test_tiny_pretraining_lowers_the_losses(tmp_path, small_shards, config, steps, expected):
    out = tmp_path / "run"
    Pretrain.main(["--config", config, "--output_dir", str(out), *opts(
        small_shards, f"run.max_steps={steps}", "optimizer.lr=1e-3", "schedular.num_warmup_steps=0")])
    losses = losses_by_name(out)
    for key in expected:
        first, last = window_means(losses[key])
        assert last < first, f"{key}: mean of the first steps {first:.4f}, of the last steps {last:.4f}"
    if config == TINY_4M:
        assert "loss_mm_bbox" in losses and "loss_mm_giou" in losses
    results = json.loads((out / "results.json").read_text())
    assert results["languages"]["final"]["steps"] == steps
    assert (out / LATEST).is_file() and (out / "config.yaml").is_file() and (out / "results.md").is_file()


def test_kill_and_resume_continues_at_the_same_step_and_data_position(tmp_path, small_shards):
    common = ["--config", TINY_4M, *opts(small_shards, "schedular.epochs=1", "train_dataset_size=64")]
    full = tmp_path / "full"
    Pretrain.main(["--output_dir", str(full), *common])  # 8 iterations (64 / batch 8)
    part = tmp_path / "part"
    Pretrain.main(["--output_dir", str(part), *common[:-1], *common[-1:], "run.max_steps=3"])
    state = load_training_state(part / LATEST)
    assert state["step"] == 3 and state["batches_in_epoch"] == 3
    positions = state["extra"]["positions_per_rank"][0]
    assert positions["texts_para"] == [2, 1]  # 8 records = one batch per pass; one batch per iteration
    Pretrain.main(["--output_dir", str(part), "--resume", "latest", *common])
    a = load_training_state(full / LATEST)
    b = load_training_state(part / LATEST)
    assert a["step"] == b["step"] == 8
    assert a["extra"]["positions_per_rank"] == b["extra"]["positions_per_rank"]
    assert a["extra"]["positions_per_rank"][0]["regions"][0] >= 1  # the 4-record region source passed its end
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)


def test_two_processes_through_run_py(tmp_path, small_shards):
    out = tmp_path / "ddp"
    cmd = [sys.executable, str(ROOT / "run.py"), "--task", "pretrain_cclm_4m", "--dist", "cpu:2", "--config",
           TINY_4M, "--output_dir", str(out), *opts(small_shards, "run.max_steps=3")]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert load_training_state(out / LATEST)["step"] == 3
