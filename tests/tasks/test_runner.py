"""The run sequence's starting weights, through the task scripts on the synthetic world: a checkpoint that fills the
model replaces the initial ImageNet / XLM-R weights (which are then never read), every retrieval task evaluates a
pre-training checkpoint zero-shot, and a checkpoint made for another task is one line naming that task."""
import importlib
import json
import logging
import sys
from pathlib import Path

import pytest
import torch

import Pretrain
import Retrieval
from tasks.registry import TASKS
from tasks.runner import run_script
from tests.tasks.test_retrieval_tasks import one_thread  # noqa: F401  (autouse: the tiny models on one thread)

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs/tiny"
FAST = ["run.progress=false", "run.log_every=1", "run.num_workers=0"]
# The tiny pre-training config asking for the initial weights the reference starts from; neither file exists
# (the tiny text encoder folder holds a tokenizer and a config.json, no weights).
WITH_INITIAL_WEIGHTS = ["load_vision_params=true", "vision_config.ckpt=nowhere/swin_base_patch4_window7_224_22k.pth",
                        "load_text_params=true"]


@pytest.fixture(scope="module")
def pretraining_checkpoint(random_checkpoint):
    """A tiny CCLM pre-training checkpoint ({'model': sd}, our layout; random weights: the point is which weights
    are there, not what they score)."""
    return random_checkpoint(TINY / "pretrain_cclm_4m.yaml", ROOT / "configs/base/pretrain.yaml", "cclm_pretrain")


def run_expecting_user_error(task: str, flags: list[str], tmp_path, monkeypatch, caplog) -> str:
    """Run ``task``'s script as the command line does; assert exit code 2 and one logged line; return it."""
    script = importlib.import_module(TASKS[task].script.removesuffix(".py"))
    monkeypatch.setattr(sys, "argv", [TASKS[task].script, "--task", task, "--output_dir", str(tmp_path), *flags])
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exited:
        run_script(script.main)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert exited.value.code == 2 and len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].exc_info is None and "\n" not in errors[0].getMessage()
    return errors[0].getMessage()


def test_pretraining_needs_the_initial_weights_without_a_checkpoint(tmp_path, monkeypatch, caplog):
    message = run_expecting_user_error("pretrain_cclm_4m", ["--config", str(TINY / "pretrain_cclm_4m.yaml"), "--opts",
                                                            *FAST, *WITH_INITIAL_WEIGHTS], tmp_path, monkeypatch, caplog)
    assert "swin_base_patch4_window7_224_22k.pth does not exist" in message


def test_continuing_pretraining_from_a_checkpoint_never_reads_the_initial_weights(tmp_path, pretraining_checkpoint):
    out = tmp_path / "continued"
    Pretrain.main(["--config", str(TINY / "pretrain_cclm_4m.yaml"), "--output_dir", str(out),
                   "--checkpoint", pretraining_checkpoint, "--opts", *FAST, *WITH_INITIAL_WEIGHTS,
                   "run.max_steps=1", "run.ckpt_every_steps=0"])
    log = (out / "log.txt").read_text(encoding="utf-8")
    assert "swin_base_patch4_window7_224_22k" not in log
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss_mm_itc" in row for row in steps)


@pytest.mark.parametrize("task", ["itr_multi30k", "itr_coco", "xflickrco", "wit"])
def test_every_retrieval_task_evaluates_a_pretraining_checkpoint_zero_shot(task, tmp_path, pretraining_checkpoint):
    script = importlib.import_module(TASKS[task].script.removesuffix(".py"))
    out = tmp_path / task
    languages = [] if task.startswith("itr_") else ["test_languages=[en,ja]"]
    payload = script.main(["--task", task, "--config", str(TINY / f"{task}.yaml"), "--output_dir", str(out),
                           "--evaluate", "--checkpoint", pretraining_checkpoint, "--opts", *FAST, *languages])
    assert payload["languages"] and all("r_mean" in row for row in payload["languages"].values())
    log = (out / "log.txt").read_text(encoding="utf-8")
    assert "randomly initialised" not in log  # the load report: every weight of the model from the checkpoint
    assert "TaskLoadReport(missing=[], unexpected=[]," in log and "initialised=[])" in log


def test_zero_shot_evaluation_scores_the_weights_fine_tuning_would_start_from(tmp_path, pretraining_checkpoint):
    """--evaluate of the pre-training checkpoint == --evaluate of a retrieval checkpoint holding the weights that
    fine-tuning starts from (after one step at learning rate 0 no weight has moved)."""
    common = ["--config", str(TINY / "itr_multi30k.yaml")]
    Retrieval.main([*common, "--output_dir", str(tmp_path / "start"), "--checkpoint", pretraining_checkpoint,
                    "--opts", *FAST, "run.max_steps=1", "optimizer.lr=0", "schedular.lr=0", "schedular.epochs=1"])
    started = torch.load(tmp_path / "start" / "checkpoint_latest.pth", weights_only=True)["model"]
    torch.save({"model": started}, tmp_path / "started.pth")
    zero_shot = Retrieval.main([*common, "--output_dir", str(tmp_path / "zs"), "--evaluate",
                                "--checkpoint", pretraining_checkpoint, "--opts", *FAST])
    started_eval = Retrieval.main([*common, "--output_dir", str(tmp_path / "ft0"), "--evaluate",
                                   "--checkpoint", str(tmp_path / "started.pth"), "--opts", *FAST])
    assert zero_shot["languages"] == started_eval["languages"]


def test_a_checkpoint_of_another_task_is_one_line_naming_it(tmp_path, monkeypatch, caplog, random_checkpoint):
    retrieval = random_checkpoint(TINY / "itr_multi30k.yaml", ROOT / "configs/base/retrieval.yaml", "cclm_retrieval")
    message = run_expecting_user_error("xvnli", ["--config", str(TINY / "xvnli.yaml"), "--evaluate",
                                                 "--checkpoint", retrieval, "--opts", *FAST],
                                       tmp_path, monkeypatch, caplog)
    assert message.startswith(f"CheckpointMismatchError: {retrieval}: a retrieval checkpoint lacks 6 weight(s) ")
    assert "weight(s) of the classification model" in message and "cls_head." in message
