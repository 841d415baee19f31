"""The demo's training: its loss composition (ITC + TTC, ITM late), the zero-shot evaluator over the held-out scenes,
and the two arms (with and without parallel text), the second one optionally in a forked process."""
from __future__ import annotations

import copy
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from models.factory import create_model
from models.heads import clamp_temperature_
from models.losses import sample_hard_negatives
from tasks.demo.data import EpochBatches, HeldOut, TrainingData
from tasks.environment import load_starting_weights
from utils.engine import StepContext, Trainer
from models.ranking import (CCLMView, contrastive_topk, encode_images, encode_texts, evaluate_retrieval,
                              retrieval_metrics)
from utils.logging import setup_logging
from utils.results import write_results

logger = logging.getLogger("demo")

ARMS = {True: "with_parallel_text", False: "without_parallel_text"}
ARM_TITLES = {"with_parallel_text": "with parallel text", "without_parallel_text": "without parallel text"}
ARM_FILE = "arm.json"   # an arm's metrics, curve and log records, as the report needs them
# (column, metric key of the ranking metrics, header): text->image is img_r*, image->text is txt_r*
COLUMNS = [("t2i", "itc_img_r", "T->I sim"), ("t2i_itm", "img_r", "T->I ITM"),
           ("i2t", "itc_txt_r", "I->T sim"), ("i2t_itm", "txt_r", "I->T ITM")]


def demo_losses(model, batch: dict, negatives_temp: float | None = None,
                itm_rows: int | None = None) -> dict[str, torch.Tensor]:
    """ITC on the image-caption batch, TTC on the translation pairs (when present), ITM when the batch asks.

    ITM runs on the first ``itm_rows`` pairs (default: all); its negatives are drawn among them from
    softmax(similarity / ``negatives_temp``) (default: the model's temperature, as CCLM does).
    """
    clamp_temperature_(model.temp)
    image_embeds, image_atts = model.get_vision_embeds(batch["image"])
    text_embeds = model.get_text_embeds(batch["text_ids"], batch["text_atts"])
    image_feat, text_feat = model.get_features(image_embeds, text_embeds)
    losses = {"loss_itc": model.get_contrastive_loss(image_feat, text_feat)}
    if "para_ids" in batch:
        source = model.get_text_feat(model.get_text_embeds(batch["para_ids"], batch["para_atts"]))
        target = model.get_text_feat(model.get_text_embeds(batch["para_ids_2"], batch["para_atts_2"]))
        losses["loss_ttc"] = model.get_contrastive_loss(source, target)
    if batch.get("with_itm"):
        rows = slice(0, itm_rows)
        pairs = (image_embeds[rows], image_atts[rows], image_feat[rows], text_embeds[rows],
                 batch["text_atts"][rows], text_feat[rows])
        negatives = None
        if negatives_temp is not None:
            negatives = sample_hard_negatives(pairs[2], pairs[5], torch.tensor(float(negatives_temp)))
        losses["loss_itm"] = model.get_matching_loss(*pairs, hard_negatives=negatives)
    return losses


def make_demo_step(negatives_temp: float | None = None, itm_rows: int | None = None):
    """The Trainer's train_step: one update on the summed losses of the step."""
    def demo_step(ctx: StepContext, batch: dict) -> None:
        with ctx.micro_step():
            losses = demo_losses(ctx.raw_model, batch, negatives_temp, itm_rows)
        ctx.backward(losses)
    return demo_step


# ------------------------------------------------------------------------------------------------ evaluation

class Evaluator:
    """Zero-shot retrieval on the held-out scenes in every language."""

    def __init__(self, heldout: HeldOut, tokenizer, config: dict, device: torch.device):
        self.heldout, self.tokenizer, self.device = heldout, tokenizer, device
        self.max_tokens = int(config["max_tokens"])
        self.k_test = int(config["demo"]["k_test"])
        self.batch_size = int(config["demo"]["eval_batch_size"])

    def _encode(self, model):
        view = CCLMView(model)
        images = self.heldout.images.split(self.batch_size)
        return view, encode_images(view, images, self.device)

    def contrastive(self, model) -> dict[str, float]:
        """``<lang>/t2i_r1`` and ``<lang>/i2t_r1`` by contrastive similarity (cheap: the curves during training)."""
        view, img = self._encode(model)
        out = {}
        for lang, texts in self.heldout.texts.items():
            txt = encode_texts(view, texts, self.tokenizer, self.max_tokens, self.batch_size, self.device)
            i2t, t2i = contrastive_topk(img, txt, 1)
            metrics = retrieval_metrics(i2t, t2i, self.heldout.img2txt, self.heldout.txt2img, ks=(1,))
            out.update({f"{lang}/t2i_r1": metrics["img_r1"], f"{lang}/i2t_r1": metrics["txt_r1"]})
        return out

    @torch.no_grad()
    def full(self, model, with_itm: bool, progress: bool) -> dict[str, dict[str, float]]:
        """{lang: metrics}: R@1/R@5 both ways by similarity and (``with_itm``) after matching-head re-ranking."""
        model.eval()
        view, img = self._encode(model)
        out = {}
        for lang, texts in tqdm(self.heldout.texts.items(), desc="evaluation", disable=not progress):
            txt = encode_texts(view, texts, self.tokenizer, self.max_tokens, self.batch_size, self.device)
            if with_itm:
                metrics = evaluate_retrieval(view, img, txt, self.heldout.img2txt, self.heldout.txt2img,
                                             k_test=self.k_test, rerank_batch=self.batch_size * self.k_test,
                                             ks=(1, 5))
            else:
                i2t, t2i = contrastive_topk(img, txt, 5)
                metrics = {f"itc_{k}": v for k, v in retrieval_metrics(
                    i2t, t2i, self.heldout.img2txt, self.heldout.txt2img, ks=(1, 5)).items()}
            out[lang] = {f"{col}_r{k}": metrics[f"{key}{k}"] for col, key, _ in COLUMNS for k in (1, 5)
                         if f"{key}{k}" in metrics}
        model.train()
        return out


# ------------------------------------------------------------------------------------------------ one arm

@dataclass
class ArmResult:
    name: str
    metrics: dict[str, dict[str, float]]
    curve: dict = field(default_factory=dict)   # {"steps": [...], "languages": {lang: [t2i R@1, ...]}}
    records: list = field(default_factory=list)  # training log records (metrics.jsonl)
    seconds: float = 0.0      # wall-clock training time
    cpu_seconds: float = 0.0  # this process's CPU time for training and evaluating the arm (one thread)
    steps: int = 0


def _arm_config(config: dict, with_parallel: bool, output_dir: Path, progress: bool) -> dict:
    arm = copy.deepcopy(config)
    arm["demo"]["parallel_text"] = with_parallel
    arm["output_dir"] = str(output_dir)
    arm["run"]["progress"] = bool(arm["run"].get("progress", True)) and progress
    return arm


def fresh_arm_dir(output_dir: Path, with_parallel: bool) -> Path:
    """``output_dir/<arm>``, emptied: a rerun's old metrics.jsonl lines would otherwise mix into the curves."""
    arm_dir = output_dir / ARMS[with_parallel]
    if arm_dir.exists():
        shutil.rmtree(arm_dir)
    arm_dir.mkdir(parents=True)
    return arm_dir


def train_arm(config: dict, env, with_parallel: bool, root: Path, data: TrainingData, evaluator: Evaluator,
              arm_dir: Path, progress: bool = True) -> ArmResult:
    """Pre-train one model from scratch (the same initial weights in both arms) and evaluate it."""
    name = ARMS[with_parallel]
    config = _arm_config(config, with_parallel, arm_dir, progress)
    torch.manual_seed(int(config["seed"]))
    model = create_model("cclm_pretrain", config, root=root)
    load_starting_weights(model, config)
    if not config["demo"]["learn_temp"]:
        model.temp.requires_grad_(False)
    steps_per_epoch = int(config["demo"]["steps_per_epoch"])
    epochs = int(config["schedular"]["epochs"])
    curve = {"steps": [], "languages": {lang: [] for lang in evaluator.heldout.texts}}

    def evaluate(m):
        metrics = evaluator.contrastive(m)
        curve["steps"].append(trainer.state.step)
        for lang in curve["languages"]:
            curve["languages"][lang].append(metrics[f"{lang}/t2i_r1"])
        return metrics

    def batches(epoch: int, skip: int):
        return EpochBatches(data, config, epoch, skip, with_parallel, steps_per_epoch, steps_per_epoch * epochs)

    trainer = Trainer(config, env, model, output_dir=arm_dir, steps_per_epoch=steps_per_epoch, train_batches=batches,
                      evaluate=evaluate, primary_metric="en/t2i_r1" if "en" in curve["languages"] else None,
                      init_params=model.init_params, epochs=epochs,
                      train_step=make_demo_step(config["demo"]["itm_negatives_temp"], config["demo"]["itm_rows"]))
    logger.info("arm %s: %d steps, batches of %s captions%s", name, steps_per_epoch * epochs,
                config["images"]["batch_size"],
                f" + {config['texts_para']['batch_size']} translation pairs" if with_parallel else "")
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit()
    seconds = time.perf_counter() - start
    with_itm = float(config["demo"]["itm_from"]) < 1
    metrics = evaluator.full(trainer.raw_model, with_itm, progress=progress and env.is_main)
    write_results(arm_dir, metrics, primary="t2i_r1", title=f"Demo: zero-shot retrieval, {ARM_TITLES[name]}",
                  note="Recall in %, on held-out scenes; t2i = text->image, i2t = image->text; _itm = after "
                       "re-ranking with the matching head.",
                  extra={"task": "demo", "arm": name, "steps": trainer.state.step, "train_seconds": seconds})
    result = ArmResult(name, metrics, curve, _read_jsonl(arm_dir / "metrics.jsonl"), seconds,
                       time.process_time() - cpu_start, trainer.state.step)
    (arm_dir / ARM_FILE).write_text(json.dumps(asdict(result), ensure_ascii=False) + "\n", encoding="utf-8")
    return result


def _arm_process(config: dict, env, with_parallel: bool, root: Path, data: TrainingData, evaluator: Evaluator,
                 arm_dir: Path) -> None:
    """A forked process training one arm; it logs to ``arm_dir/log.txt`` only, so the console shows one bar."""
    torch.set_num_threads(1)
    setup_logging(arm_dir)
    for handler in [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]:
        logging.getLogger().removeHandler(handler)
    try:
        train_arm(config, env, with_parallel, root, data, evaluator, arm_dir, progress=False)
    except BaseException:
        logger.exception("arm %s failed", ARMS[with_parallel])
        raise


def run_arms(config: dict, env, root: Path, data: TrainingData, evaluator: Evaluator,
             output_dir: Path) -> list[ArmResult]:
    """Train the arms the config asks for; with ``demo.concurrent_arms`` (and fork available) the ablation arm runs
    in a second process at the same time, one thread each: on 2 cores that halves the wall time."""
    demo = config["demo"]
    plan = [bool(demo["parallel_text"])] + ([False] if demo["parallel_text"] and demo["ablation"] else [])
    dirs = {arm: fresh_arm_dir(output_dir, arm) for arm in plan}
    concurrent = len(plan) == 2 and demo["concurrent_arms"] and "fork" in mp.get_all_start_methods()
    if not concurrent:
        return [train_arm(config, env, arm, root, data, evaluator, dirs[arm]) for arm in plan]
    second = plan[1]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer's threads do not survive a fork
    child = mp.get_context("fork").Process(target=_arm_process, name=ARMS[second], daemon=True,
                                           args=(config, env, second, root, data, evaluator, dirs[second]))
    child.start()
    logger.info("arm %s trains in a second process (pid %d); its log: %s", ARMS[second], child.pid,
                dirs[second] / "log.txt")
    try:
        first = train_arm(config, env, plan[0], root, data, evaluator, dirs[plan[0]])
        child.join()
    finally:
        if child.is_alive():
            child.terminate()
            child.join()
    result_file = dirs[second] / ARM_FILE
    if child.exitcode != 0 or not result_file.is_file():
        raise RuntimeError(f"arm {ARMS[second]} failed (exit code {child.exitcode}); see {dirs[second] / 'log.txt'}")
    return [first, ArmResult(**json.loads(result_file.read_text(encoding="utf-8")))]


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
