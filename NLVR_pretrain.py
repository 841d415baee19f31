#!/usr/bin/env python3
"""Optional NLVR domain pre-training (task ``nlvr_domain``), then NLVR2 -> MaRVL fine-tuning from its weights.

Phase 1, domain pre-training (spec-finetune 6.6): the two-image model ``cclm_nlvr_domain`` (NLVR's paired fusion
layers, plus ``vision_proj`` and a 3-way ``ta_head``) starts from ``--checkpoint``, a CCLM pre-training checkpoint
(each fusion layer is copied into both layers of its pair; ``vision_proj`` keeps its pre-trained values and only
ranks the negatives). On the image-caption stream of pre-training (``train_file``, ``images.*``) each caption is
shown with its own image and a hard-negative one, left or right at random (labels 0 / 1), or with two negatives
(label 2, one time in three); the loss is the cross-entropy of ``ta_head`` on the fused CLS.
Phase 2 (``nlvr_finetune.enabled``): NLVR.py in the same processes, with ``--checkpoint`` = phase 1's
``checkpoint_latest.pth`` and ``--output_dir`` = ``<output_dir>/<nlvr_finetune.output_subdir>``; ``--seed``,
``--fewshot`` and ``--device`` are passed on, the other flags (``--bs``, ``--epoch``, ``--lr``, ``--opts``) are
phase 1's. Run phase 2 alone, with other flags, as ``run.py --task nlvr --checkpoint <phase 1's checkpoint>``.
Run: ``python3 run.py --task nlvr_domain --dist 1 --checkpoint cclm.th`` (or this file under torchrun, or
``main(argv)``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import NLVR
from Pretrain import build_model, train_on_streams
from utils.checkpoint import LATEST
from utils.cli import TaskSpec, run_script, setup_run
from utils.config import ConfigError
from utils.dist import barrier, cleanup_distributed
from utils.engine import StepContext

logger = logging.getLogger("nlvr_domain")

SPEC = TaskSpec("nlvr_domain", "configs/nlvr/nlvr_domain.yaml", "configs/base/nlvr_domain.yaml",
                bs_keys=("images.batch_size",),
                unsupported_flags={"evaluate": "it has no evaluation of its own: evaluate the fine-tuned model with "
                                               "run.py --task nlvr --evaluate --checkpoint "
                                               "<output_dir>/nlvr_ft/checkpoint_best.pth",
                                   "gmt": "NLVR2/MaRVL have no translate-test files"})


def domain_step(ctx: StepContext, item: list) -> None:
    """One optimiser update per image-caption batch: the left / right / neither loss."""
    for _, batch in item:
        with ctx.micro_step():
            losses = ctx.model(image=batch["image"], text_ids=batch["text_ids"], text_atts=batch["text_atts"])
        ctx.backward(losses)


def finetune_argv(config: dict, output_dir: Path, device: str | None) -> list[str]:
    """NLVR.py's flags for phase 2: its config, phase 1's checkpoint, a sub-folder of the output, the shared flags."""
    block = config["nlvr_finetune"]
    argv = ["--config", block["fewshot_config"] if config.get("fewshot") else block["config"],
            "--output_dir", str(output_dir / block["output_subdir"]), "--checkpoint", str(output_dir / LATEST),
            "--seed", str(config["seed"])]
    if config.get("fewshot"):
        argv += ["--fewshot", str(config["fewshot"])]
    if device:
        argv += ["--device", device]
    return argv


def pretrain_domain(config: dict, env, output_dir: Path) -> dict:
    """Phase 1: train ``cclm_nlvr_domain`` and write its results; the mean losses of the last logging window."""
    per_process = int(config["images"]["batch_size"])
    if per_process < 3:
        raise ConfigError(f"images.batch_size is {per_process} per process; the domain objective needs at least 3 "
                          "images per batch (two distinct negatives per caption); --bs is split over the processes")
    model = build_model("cclm_nlvr_domain", config)
    finetune = config["nlvr_finetune"]
    rows = train_on_streams(config, env, model, output_dir, domain_step, "NLVR domain pre-training", "nlvr_domain",
                            extra={"checkpoint": config.get("checkpoint"),
                                   "nlvr_finetune": str(output_dir / finetune["output_subdir"])
                                   if finetune["enabled"] else None})
    barrier()
    return rows


def main(argv=None) -> dict:
    """Run phase 1 and (unless disabled) phase 2; returns {'domain': losses, 'nlvr': NLVR.py's results}."""
    run = setup_run(SPEC, argv, "NLVR domain pre-training, then NLVR2 -> MaRVL")
    config, env = run.config, run.env
    try:
        out = {"domain": pretrain_domain(config, env, run.output_dir)}
        if config["nlvr_finetune"]["enabled"]:
            logger.info("domain pre-training done; fine-tuning NLVR from %s", run.output_dir / LATEST)
            out["nlvr"] = NLVR.main(finetune_argv(config, run.output_dir, run.args.device))
        return out
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    run_script(main)
