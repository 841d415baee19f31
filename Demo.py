#!/usr/bin/env python3
"""The embedded demo: cross-lingual transfer you can watch on a 2-core CPU, without GPUs, weights or downloads.

1. A synthetic world is generated (cached under ``cache/``): training scenes with English captions only, en<->X
   translation pairs for the other languages, and held-out scenes captioned in every language, whose contents never
   occur in a training file nor in the tokenizer's text.
2. A tiny CCLM (our ``CCLMPretrain``) is pre-trained with the CCLM objectives that carry the transfer: image-text
   contrastive (ITC) on the English captions and text-text contrastive (TTC) on the translation pairs, both in one
   update per step; the matching head (ITM, hard negatives) joins for the last part of training.
3. Zero-shot retrieval is measured in every language on the held-out scenes, by contrastive similarity and after
   re-ranking the top ``demo.k_test`` candidates with the matching head.
4. With ``demo.ablation`` the same budget (same steps and image-text batches) is trained again without parallel text.

Images are not augmented: every caption states where its objects are, so flips and crops would change its meaning.
Run: ``python3 run.py --task demo`` (``--opts demo.parallel_text=false`` trains the ablation arm alone).
"""
from __future__ import annotations

import copy
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dataset.checked import AnnotationError, iter_jsonl
from dataset.images import load_image
from dataset.retrieval import read_caption_json_eval
from dataset.shards import derived_seed
from dataset.text import pad_ids, pre_caption, tokenize_to_ids
from dataset.tokenizer import load_tokenizer
from dataset.transforms import build_transform
from models.factory import create_model
from models.heads import clamp_temperature_
from models.losses import sample_hard_negatives
from models.ranking import (CCLMView, contrastive_topk, encode_images, encode_texts, evaluate_retrieval,
                            retrieval_metrics)
from utils.cli import TaskSpec, run_script, setup_run
from utils.demo_plots import plot_recall_curves, plot_training_curves
from utils.dist import cleanup_distributed
from utils.engine import StepContext, Trainer
from utils.logging import setup_logging
from utils.results import write_results
from utils.task import load_starting_weights, prepare_text_encoder, resolve_data_root

logger = logging.getLogger("demo")

SPEC = TaskSpec("demo", "configs/tiny/demo.yaml", "configs/base/demo.yaml",
                bs_keys=("images.batch_size", "texts_para.batch_size"),
                unsupported_flags={flag: "the demo trains from scratch in a few minutes"
                                   for flag in ("resume", "evaluate", "fewshot", "gmt", "checkpoint")})

ARMS = {True: "with_parallel_text", False: "without_parallel_text"}
ARM_TITLES = {"with_parallel_text": "with parallel text", "without_parallel_text": "without parallel text"}
ARM_FILE = "arm.json"   # an arm's metrics, curve and log records, as the report needs them
HELDOUT_FILE = "data/finetune/multi30k/test_2016_flickr.{lang}.json"
# The targets, stated for 200 held-out scenes (percent R@1, text->image).
TARGET_EN_R1, TARGET_RATIO, TARGET_ABLATION_MAX = 50.0, 0.6, 5.0
# (column, metric key of models.ranking, header): text->image is img_r*, image->text is txt_r*
COLUMNS = [("t2i", "itc_img_r", "T->I sim"), ("t2i_itm", "img_r", "T->I ITM"),
           ("i2t", "itc_txt_r", "I->T sim"), ("i2t_itm", "txt_r", "I->T ITM")]


# ------------------------------------------------------------------------------------------------ data

@dataclass
class TrainingData:
    """The world's pre-training records as tensors in memory (a few thousand small images and sentences)."""

    images: torch.Tensor          # N x 3 x res x res
    captions: list[list[int]]     # per image: indices into caption_ids
    caption_ids: torch.Tensor     # M x max_tokens
    caption_atts: torch.Tensor
    para_ids: torch.Tensor        # P x 2 x max_tokens (source, target)
    para_atts: torch.Tensor


class TextInputs:
    """Clean, tokenise and pad texts exactly as the task loaders do: text -> (ids, attention mask)."""

    def __init__(self, tokenizer, max_words: int, max_tokens: int):
        self.tokenizer, self.max_words, self.max_tokens = tokenizer, max_words, max_tokens

    def __call__(self, text: str, at: str) -> tuple[list[int], list[int]]:
        try:
            ids = tokenize_to_ids(self.tokenizer, pre_caption(text, self.max_words), self.max_tokens)
        except ValueError as e:
            raise AnnotationError(f"{at}: cannot use the text {text!r}: {e}") from None
        return pad_ids(ids, self.max_tokens, self.tokenizer.pad_token_id)


def _shard_files(root: Path, folders: list[str], key: str) -> list[Path]:
    files = []
    for folder in folders:
        path = root / folder
        found = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
        if not found or not found[0].is_file():
            raise FileNotFoundError(f"config {key}: {path} has no .jsonl file")
        files += found
    return files


def _captions_in(value, lang: str, at: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    texts = [item.get(lang) for item in items if isinstance(item, dict)]
    if not texts or any(not isinstance(t, str) for t in texts):
        raise AnnotationError(f"{at}: every caption must be a dict with a {lang!r} text (the demo trains on "
                              f"demo.caption_language={lang!r}), got {value!r}")
    return texts


def load_training_data(config: dict, root: Path, encode: TextInputs) -> TrainingData:
    """Read the image-text and parallel-text shards named by ``train_file`` and ``train_file_text``."""
    transform = build_transform("test", int(config["image_res"]))
    lang = config["demo"]["caption_language"]
    images, captions, ids, atts = [], [], [], []
    for path in _shard_files(root, list(config["train_file"]), "train_file"):
        for line, record in iter_jsonl(path):
            at = f"{path}:{line}"
            if "binary" not in record or "caption" not in record:
                raise AnnotationError(f"{at}: an image-text record needs 'binary' and 'caption', has {sorted(record)}")
            images.append(transform(load_image(record["binary"], base64=True, where=at)))
            captions.append([])
            for text in _captions_in(record["caption"], lang, at):
                captions[-1].append(len(ids))
                text_ids, text_atts = encode(text, at)
                ids.append(text_ids)
                atts.append(text_atts)
    pairs = []
    for path in _shard_files(root, list(config["train_file_text"]), "train_file_text"):
        for line, record in iter_jsonl(path):
            at = f"{path}:{line}"
            if "source_text" not in record or "target_text" not in record:
                raise AnnotationError(f"{at}: a translation pair needs 'source_text' and 'target_text', has "
                                      f"{sorted(record)}")
            pairs.append([encode(record["source_text"], at), encode(record["target_text"], at)])
    if not images or not pairs:
        raise ValueError(f"the world under {root} has {len(images)} training images and {len(pairs)} translation pairs; "
                         "the demo needs both")
    para = torch.tensor(pairs)  # P x 2 (source, target) x 2 (ids, atts) x max_tokens
    return TrainingData(torch.stack(images), captions, torch.tensor(ids), torch.tensor(atts), para[:, :, 0],
                        para[:, :, 1])


@dataclass
class HeldOut:
    """The held-out scenes: one image tensor batch and, per language, the (parallel) captions."""

    images: torch.Tensor
    texts: dict[str, list[str]]
    img2txt: list[list[int]]
    txt2img: list[int]


def load_heldout(root: Path, languages: list[str], image_res: int, max_words: int) -> HeldOut:
    """Read ``test_2016_flickr.<lang>.json`` of every language; all must list the same images in the same order."""
    transform = build_transform("test", image_res)
    texts, reference = {}, None
    for lang in languages:
        path = root / HELDOUT_FILE.format(lang=lang)
        data = read_caption_json_eval(path, root / "images", max_words)
        if reference is None:
            reference = data
        elif [str(i) for i in data.images] != [str(i) for i in reference.images] or data.img2txt != reference.img2txt:
            raise AnnotationError(f"{path}: its images or caption counts differ from "
                                  f"{root / HELDOUT_FILE.format(lang=languages[0])}; the held-out sets must be parallel")
        texts[lang] = data.texts
    images = torch.stack([transform(ref.load()) for ref in reference.images])
    return HeldOut(images, texts, reference.img2txt, reference.txt2img)


def trim_padding(ids: torch.Tensor, atts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the padding columns no row of the batch needs (positions start at 0, so nothing else changes)."""
    length = max(1, int(atts.sum(dim=1).max()))
    return ids[:, :length], atts[:, :length]


class EpochBatches:
    """The batches of one epoch, drawn from seeded generators: the image-text draws depend only on (seed, epoch), so
    both arms see the same image-text batches; parallel-text draws come from their own generator."""

    def __init__(self, data: TrainingData, config: dict, epoch: int, skip: int, with_parallel: bool,
                 steps_per_epoch: int, total_steps: int):
        self.data, self.epoch, self.skip, self.with_parallel = data, epoch, skip, with_parallel
        self.steps, self.total = steps_per_epoch, total_steps
        self.batch_size = min(int(config["images"]["batch_size"]), len(data.images))
        self.para_batch_size = min(int(config["texts_para"]["batch_size"]), len(data.para_ids))
        demo, seed = config["demo"], int(config["seed"])
        self.itm_from, self.itm_every = float(demo["itm_from"]), max(1, int(demo["itm_every"]))
        self.images = torch.Generator().manual_seed(derived_seed(seed, "demo-images", epoch))
        self.texts = torch.Generator().manual_seed(derived_seed(seed, "demo-para", epoch))

    def __len__(self) -> int:
        return self.steps - self.skip

    def with_itm(self, step: int) -> bool:
        """Whether global step ``step`` adds the matching loss (from ``itm_from`` x total steps, every k-th)."""
        first = math.ceil(self.itm_from * self.total)
        return self.itm_from < 1 and step >= first and (step - first) % self.itm_every == 0

    def draw(self, step: int) -> dict:
        data = self.data
        rows = torch.randperm(len(data.images), generator=self.images)[:self.batch_size]
        picks = torch.randint(0, 1 << 30, (len(rows),), generator=self.images)
        caption = torch.tensor([data.captions[r][p % len(data.captions[r])] for r, p in zip(rows.tolist(),
                                                                                           picks.tolist())])
        text_ids, text_atts = trim_padding(data.caption_ids[caption], data.caption_atts[caption])
        batch = {"image": data.images[rows], "text_ids": text_ids, "text_atts": text_atts,
                 "with_itm": self.with_itm(step)}
        pairs = torch.randperm(len(data.para_ids), generator=self.texts)[:self.para_batch_size]
        if self.with_parallel:
            batch["para_ids"], batch["para_atts"] = trim_padding(data.para_ids[pairs, 0], data.para_atts[pairs, 0])
            batch["para_ids_2"], batch["para_atts_2"] = trim_padding(data.para_ids[pairs, 1],
                                                                     data.para_atts[pairs, 1])
        return batch

    def __iter__(self):
        for i in range(self.steps):
            batch = self.draw(self.epoch * self.steps + i)  # drawn even when skipped, so the stream is the same
            if i >= self.skip:
                yield batch


# ------------------------------------------------------------------------------------------------ model

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


# ------------------------------------------------------------------------------------------------ report

def _cell(metrics: dict, column: str) -> str:
    if f"{column}_r1" not in metrics:
        return "-"
    return f"{metrics[f'{column}_r1']:.1f}/{metrics[f'{column}_r5']:.1f}"


def results_table(arms: list[ArmResult], markdown: bool = False) -> str:
    """Languages as rows; per arm, R@1/R@5 text->image and image->text, by similarity and after ITM re-ranking."""
    languages = list(arms[0].metrics)
    headers = ["lang"] + [f"{h} ({ARM_TITLES[a.name]})" if markdown else h for a in arms for _, _, h in COLUMNS]
    rows = [[lang] + [_cell(a.metrics[lang], col) for a in arms for col, _, _ in COLUMNS] for lang in languages]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
    width = 11
    group = " | ".join(ARM_TITLES[a.name].center(width * len(COLUMNS) - 1) for a in arms)
    lines = [" " * 5 + "| " + group, f"{headers[0]:<5}| " + " | ".join(
        " ".join(f"{h:>{width - 1}}" for h in headers[1 + i * len(COLUMNS):1 + (i + 1) * len(COLUMNS)])
        for i in range(len(arms)))]
    for r in rows:
        lines.append(f"{r[0]:<5}| " + " | ".join(
            " ".join(f"{c:>{width - 1}}" for c in r[1 + i * len(COLUMNS):1 + (i + 1) * len(COLUMNS)])
            for i in range(len(arms))))
    return "\n".join(lines) + "\n"


def check_targets(arms: list[ArmResult]) -> list[dict]:
    """The issue's targets (text->image R@1 by similarity) as {target, value, ok} rows, for the arms that ran."""
    checks = []
    for arm in arms:
        r1 = {lang: m["t2i_r1"] for lang, m in arm.metrics.items()}
        if arm.name == ARMS[True] and "en" in r1:
            checks.append({"target": f"{arm.name}: en R@1 >= {TARGET_EN_R1:g}", "value": r1["en"],
                           "ok": r1["en"] >= TARGET_EN_R1})
            for lang in (x for x in r1 if x != "en"):
                floor = TARGET_RATIO * r1["en"]
                checks.append({"target": f"{arm.name}: {lang} R@1 >= {TARGET_RATIO:g} x en = {floor:.1f}",
                               "value": r1[lang], "ok": r1[lang] >= floor})
        if arm.name == ARMS[False]:
            for lang in (x for x in r1 if x != "en"):
                checks.append({"target": f"{arm.name}: {lang} R@1 <= {TARGET_ABLATION_MAX:g}", "value": r1[lang],
                               "ok": r1[lang] <= TARGET_ABLATION_MAX})
    return checks


def write_report(output_dir: Path, arms: list[ArmResult], heldout: HeldOut, timings: dict, world: dict) -> dict:
    """results.json, results.md and the two PNGs in ``output_dir``; returns the results.json payload."""
    n_images = len(heldout.images)
    chance = 100.0 / n_images
    checks = check_targets(arms)
    payload = {"task": "demo", "primary": "t2i_r1", "heldout_images": n_images, "chance_r1": chance,
               "arms": {a.name: {"languages": a.metrics, "curve": a.curve, "steps": a.steps,
                                 "train_seconds": a.seconds, "cpu_seconds": a.cpu_seconds} for a in arms},
               "targets": checks, "timings": timings, "world": world}
    (output_dir / "results.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
    lines = ["# Demo: zero-shot cross-lingual retrieval", "",
             f"{n_images} held-out scenes (chance R@1 {chance:.1f}%). Cells are R@1/R@5 in %. T->I: text->image, "
             "I->T: image->text; sim: contrastive similarity, ITM: after re-ranking the top "
             f"candidates with the matching head. Image-caption training data: English only.", "",
             results_table(arms, markdown=True), "## Targets", ""]
    lines += [f"- {'ok  ' if c['ok'] else 'MISS'} {c['target']}: {c['value']:.1f}" for c in checks]
    lines += ["", "## Timings (s)", ""] + [f"- {k}: {v:.0f}" for k, v in timings.items()]
    (output_dir / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot_training_curves({ARM_TITLES[a.name]: a.records for a in arms if a.records},
                         output_dir / "training_curves.png")
    plot_recall_curves({ARM_TITLES[a.name]: a.curve for a in arms}, output_dir / "recall_curves.png", chance=chance)
    return payload


# ------------------------------------------------------------------------------------------------ main

def _check_supported(config: dict, env) -> None:
    if env.world_size > 1:
        raise ValueError(f"the demo runs in one process; it was started with {env.world_size} (use --dist cpu or "
                         "--dist gpu0)")


def main(argv=None) -> dict:
    run = setup_run(SPEC, argv, "CCLM demo: cross-lingual transfer on a synthetic world")
    config, env, output_dir = run.config, run.env, run.output_dir
    try:
        _check_supported(config, env)
        # One process needs no process group (torchrun makes one), and a forked arm must not share it.
        cleanup_distributed()
        demo = config["demo"]
        if int(demo["threads"]) > 0:
            torch.set_num_threads(int(demo["threads"]))
        started = time.perf_counter()
        root = resolve_data_root(config)
        config["text_encoder"] = prepare_text_encoder(config, root)
        tokenizer = load_tokenizer(config["text_encoder"])
        encode = TextInputs(tokenizer, int(config["max_words"]), int(config["max_tokens"]))
        data = load_training_data(config, root, encode)
        world = json.loads((root / "manifest.json").read_text(encoding="utf-8"))["params"]
        languages = list(demo["languages"] or world["languages"])
        heldout = load_heldout(root, languages, int(config["image_res"]), int(config["max_words"]))
        timings = {"data": time.perf_counter() - started}
        logger.info("world %s: %d training images (%d captions in %s), %d translation pairs, %d held-out scenes in %s",
                    root, len(data.images), len(data.caption_ids), demo["caption_language"], len(data.para_ids),
                    len(heldout.images), ",".join(languages))
        evaluator = Evaluator(heldout, tokenizer, config, env.device)
        arms = run_arms(config, env, root, data, evaluator, output_dir)
        timings.update({f"train {a.name}": a.seconds for a in arms})
        timings.update({f"cpu {a.name}": a.cpu_seconds for a in arms})
        timings["total"] = time.perf_counter() - started
        payload = write_report(output_dir, arms, heldout, timings, world) if env.is_main else {}
        logger.info("zero-shot retrieval on %d held-out scenes (R@1/R@5 %%, chance R@1 %.1f%%):\n%s",
                    len(heldout.images), 100.0 / len(heldout.images), results_table(arms))
        for check in payload.get("targets", []):
            logger.info("target %s %s: %.1f", "ok  " if check["ok"] else "MISS", check["target"], check["value"])
        logger.info("wrote results.json, results.md, training_curves.png and recall_curves.png to %s in %.0f s",
                    output_dir, timings["total"])
        return payload
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    run_script(main)
