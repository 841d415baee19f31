"""NLVR_pretrain.py (task nlvr_domain): domain pre-training on the synthetic world, then NLVR fine-tuning from it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import NLVR_pretrain
from utils.checkpoint import LATEST, load_training_state
from utils.config import ConfigError
from tasks.environment import resolve_data_root

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs/tiny/nlvr_domain.yaml")
FAST = ["run.progress=false", "run.log_every=1"]


@pytest.fixture(scope="module")
def world():
    return resolve_data_root({"synthetic": {"images": 200, "seed": 0}})


def read_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def fast_nlvr_config(folder: Path) -> Path:
    """The tiny NLVR config, two steps and one test language, for phase 2."""
    path = folder / "nlvr_fast.yaml"
    path.write_text(f"base: {ROOT / 'configs/tiny/nlvr.yaml'}\ntest_languages: [zh]\nbatch_size_test: 64\n"
                    "run: {max_steps: 2, progress: false, num_workers: 0, log_every: 1}\n", encoding="utf-8")
    return path


def test_domain_pretraining_then_nlvr_finetuning_from_its_checkpoint(world, tmp_path):
    """run.py runs phase 1 (NLVR_pretrain.py), then phase 2 (NLVR.py) from its checkpoint, in two launches."""
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), "--task", "nlvr_domain", "--dist", "cpu",
                           "--config", TINY, "--output_dir", str(out), "--seed", "7", "--opts", *FAST,
                           "run.max_steps=3", f"nlvr_finetune.config={fast_nlvr_config(tmp_path)}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nlvr_domain done; starting task nlvr" in done.stderr
    domain = read_json(out / "results.json")
    assert domain["extra"]["task"] == "nlvr_domain" and domain["languages"]["final"]["steps"] == 3
    assert domain["extra"]["nlvr_finetune"] == str(out / "nlvr_ft")
    assert torch.isfinite(torch.tensor(domain["languages"]["final"]["loss_ta"]))
    state = load_training_state(out / LATEST)["model"]
    assert {"ta_head.weight", "vision_proj.weight"} <= set(state)
    assert any(".encoder.layer.5.crossattention." in k for k in state)  # 2 text + 2 x 2 paired fusion layers
    # phase 2: NLVR.py from that checkpoint, in a sub-folder, with the shared seed
    nlvr = read_json(out / "nlvr_ft" / "results.json")
    assert list(nlvr["languages"]) == ["en", "zh"] and nlvr["extra"]["checkpoint"] == str(out / LATEST)
    assert nlvr["extra"]["task"] == "nlvr"
    assert "seed: 7" in (out / "nlvr_ft" / "config.yaml").read_text()
    log = (out / "nlvr_ft" / "log.txt").read_text()
    assert "dropped ta_head.weight" in log and "cls_head" in log


def test_phase_one_alone_names_the_phase_two_command(world, tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level("INFO"):
        NLVR_pretrain.main(["--config", TINY, "--output_dir", str(out), "--opts", *FAST, "run.max_steps=1"])
    assert f"next: python3 run.py --task nlvr --config configs/tiny/nlvr.yaml --output_dir {out / 'nlvr_ft'}" \
        in caplog.text and not (out / "nlvr_ft").exists()


def test_domain_pretraining_alone_lowers_its_loss(world, tmp_path):
    out = tmp_path / "run"
    NLVR_pretrain.main(["--config", TINY, "--output_dir", str(out), "--epoch", "2", "--opts", *FAST,
                        "nlvr_finetune.enabled=false",
                        "run.max_steps=40", "optimizer.lr=1e-3", "schedular.num_warmup_steps=0"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss_ta"] for r in rows if "loss_ta" in r]
    assert len(losses) >= 40 and not (out / "nlvr_ft").exists()
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10


def test_domain_pretraining_has_no_evaluate_mode(world, tmp_path):
    with pytest.raises(ConfigError, match="--task nlvr --evaluate"):
        NLVR_pretrain.main(["--config", TINY, "--output_dir", str(tmp_path), "--evaluate"])


def test_a_batch_too_small_for_two_negatives_is_a_config_error(world, tmp_path):
    with pytest.raises(ConfigError, match="images.batch_size is 2 per process"):
        NLVR_pretrain.main(["--config", TINY, "--output_dir", str(tmp_path), "--bs", "2"])
