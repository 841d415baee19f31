#!/usr/bin/env python3
"""Optional NLVR domain pre-training (task ``nlvr_domain``); ``run.py`` then runs the ``nlvr`` task from its weights.

Phase 1, here: the two-image model ``cclm_nlvr_domain`` (NLVR's paired fusion layers, plus ``vision_proj`` and a 3-way
``ta_head``) starts from ``--checkpoint``, a CCLM pre-training checkpoint (each fusion layer is copied into both layers
of its pair; ``vision_proj`` keeps its pre-trained values and only ranks the negatives). On the image-caption stream of
pre-training (``train_file``, ``images.*``) each caption is shown with its own image and a hard-negative one, left or
right at random (labels 0 / 1), or with two negatives (label 2, one time in three); the loss is the cross-entropy of
``ta_head`` on the fused CLS (docs/protocols.md#nlvr-domain-pretraining).
Phase 2 (``nlvr_finetune.enabled``): ``run.py`` launches NLVR.py after this run, with ``--checkpoint`` = phase 1's
``checkpoint_latest.pth`` and ``--output_dir`` = ``<output_dir>/<nlvr_finetune.output_subdir>``; ``--seed``,
``--fewshot`` and ``--device`` are passed on, the other flags are phase 1's. Under torchrun directly, the log names
the phase-2 command.
Run: ``python3 run.py --task nlvr_domain --dist 1 --checkpoint cclm.th`` (or this file under torchrun, or
``main(argv)``).
"""
from __future__ import annotations


from tasks.pretraining import StreamTraining
from tasks.runner import Outcome, Run, request_followup, run_script, run_task
from utils.checkpoint import LATEST
from utils.config import ConfigError
from utils.engine import StepContext


def domain_step(ctx: StepContext, item: list) -> None:
    """One optimiser update per image-caption batch: the left / right / neither loss."""
    for _, batch in item:
        with ctx.micro_step():
            losses = ctx.model(image=batch["image"], text_ids=batch["text_ids"], text_atts=batch["text_atts"])
        ctx.backward(losses)


def check_batch(run: Run) -> None:
    """The domain objective needs two distinct negatives per caption: 3 images per process at least."""
    per_process = int(run.config["images"]["batch_size"])
    if per_process < 3:
        raise ConfigError(f"images.batch_size is {per_process} per process; the domain objective needs at least 3 "
                          "images per batch (two distinct negatives per caption); --bs is split over the processes")


def finetune_argv(run: Run) -> list[str]:
    """NLVR.py's flags for phase 2: its config, phase 1's checkpoint, a sub-folder of the output, the shared flags."""
    config, block = run.config, run.config["nlvr_finetune"]
    argv = ["--config", block["fewshot_config"] if config.get("fewshot") else block["config"],
            "--output_dir", str(run.output_dir / block["output_subdir"]), "--checkpoint",
            str(run.output_dir / LATEST), "--seed", str(config["seed"])]
    if config.get("fewshot"):
        argv += ["--fewshot", str(config["fewshot"])]
    if run.args.device:
        argv += ["--device", run.args.device]
    return argv


class DomainPretraining(StreamTraining):
    """Stream training of the domain model; its results name the fine-tuning that follows."""

    def results(self, run: Run, data, outcome: Outcome) -> dict:
        block = run.config["nlvr_finetune"]
        outcome.facts["nlvr_finetune"] = str(run.output_dir / block["output_subdir"]) if block["enabled"] else None
        payload = super().results(run, data, outcome)
        if block["enabled"]:
            request_followup(run, "nlvr", finetune_argv(run))
        return payload


TASK = DomainPretraining("NLVR domain pre-training", "cclm_nlvr_domain", domain_step, check=check_batch)


def main(argv=None) -> dict:
    """Run phase 1; returns the results.json payload (rank 0)."""
    return run_task(TASK, "NLVR_pretrain.py", argv)


if __name__ == "__main__":
    run_script(main)
