"""The demo task kind: cross-lingual transfer on a synthetic world, two arms (with / without parallel text) of a tiny
CCLM pre-trained on one CPU, zero-shot retrieval in every language on held-out scenes, and a report.

Submodules: ``data`` (the world's records in memory, the held-out scenes, seeded batches), ``arms`` (losses,
evaluator, training of an arm), ``report`` (table, targets, results files), ``plots`` (the figures).
"""
from __future__ import annotations

import json
import logging
import time

import torch

from tasks.demo.arms import Evaluator, run_arms
from tasks.demo.data import TextInputs, load_heldout, load_training_data
from tasks.demo.report import itm_note, results_table, write_report
from tasks.runner import Run, TaskKind
from utils.config import ConfigError
from utils.dist import cleanup_distributed

logger = logging.getLogger("demo")


class DemoTask(TaskKind):
    """Both arms trained and evaluated, then the report; one process only."""

    title = "CCLM demo: cross-lingual transfer on a synthetic world"

    def execute(self, run: Run) -> dict:
        config, env, output_dir, root = run.config, run.env, run.output_dir, run.root
        if env.world_size > 1:
            raise ConfigError(f"the demo runs in one process; it was started with {env.world_size} (use --dist cpu "
                              "or --dist gpu0)")
        # One process needs no process group (torchrun makes one), and a forked arm must not share it.
        cleanup_distributed()
        demo = config["demo"]
        if int(demo["threads"]) > 0:
            torch.set_num_threads(int(demo["threads"]))
        started = time.perf_counter()
        encode = TextInputs(run.tokenizer, int(config["max_words"]), int(config["max_tokens"]))
        data = load_training_data(config, root, encode)
        # the world's parameters, and its folder: the held-out images and captions that Search.py can query
        world = {**json.loads((root / "manifest.json").read_text(encoding="utf-8"))["params"], "root": str(root)}
        languages = list(demo["languages"] or world["languages"])
        heldout = load_heldout(root, languages, int(config["image_res"]), int(config["max_words"]))
        timings = {"data": time.perf_counter() - started}
        logger.info("world %s: %d training images (%d captions in %s), %d translation pairs, %d held-out scenes in %s",
                    root, len(data.images), len(data.caption_ids), demo["caption_language"], len(data.para_ids),
                    len(heldout.images), ",".join(languages))
        evaluator = Evaluator(heldout, run.tokenizer, config, env.device)
        arms = run_arms(config, env, root, data, evaluator, output_dir)
        timings.update({f"train {a.name}": a.seconds for a in arms})
        timings.update({f"cpu {a.name}": a.cpu_seconds for a in arms})
        timings["total"] = time.perf_counter() - started
        payload = write_report(output_dir, arms, heldout, timings, world, config) if env.is_main else {}
        logger.info("zero-shot retrieval on %d held-out scenes (R@1/R@5 %%, chance R@1 %.1f%%):\n%s",
                    len(heldout.images), 100.0 / len(heldout.images),
                    results_table(arms, note=itm_note(arms, config)))
        for check in payload.get("targets", []):
            logger.info("target %s %s: %.1f", "ok  " if check["ok"] else "MISS", check["target"], check["value"])
        logger.info("wrote results.json, results.md, training_curves.png and recall_curves.png to %s in %.0f s",
                    output_dir, timings["total"])
        return payload
