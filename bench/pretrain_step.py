#!/usr/bin/env python3
"""Pre-training step throughput on CPU: forward + backward in train mode, samples/s and peak memory.

    python3 bench/pretrain_step.py tiny GOLDEN_DIR [--variant before@/path/to/old/checkout] [--variant now+bf16] ...
    python3 bench/pretrain_step.py full [--batch 2] [--variant now] [--variant now+bf16] [--variant now+ckpt]

``tiny``: the golden fixture's model and its three batches (a: image + two captions, b: parallel text, c: regions;
batch 16, 224 px), as the reference timed them (torch.set_num_threads(2), 2 warm-up steps, then the median of
``--steps``). ``full``: Swin-B (224) + a 12-layer XLM-R-large-shaped text/fusion encoder built from a config made in
code (random weights, nothing downloaded), with synthetic batches of the same three kinds at ``--batch``.

A variant is ``label[@checkout][+bf16][+compile][+ckpt]``: the code of another checkout (default: this one), bf16
autocast, torch.compile, activation checkpointing. Each variant runs in its own worker process; in ``tiny`` mode the
variants alternate step by step so that they share the machine's load (in ``full`` mode ``--together`` of them at a
time). Each step also zeroes the gradients (the optimiser step is not timed, as in the reference's figures). Peak
memory is the worker process's peak resident set (model, gradients and activations; no optimiser state).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BATCHES = ("a", "b", "c")
REFERENCE_MEDIANS_KEY = "timing_s"


# ---------------------------------------------------------------------------------------------------- variants

def parse_variant(spec: str) -> dict:
    """``label[@root][+bf16][+compile][+ckpt]`` -> dict(label, root, precision, compile, ckpt)."""
    head, *flags = spec.split("+")
    label, _, root = head.partition("@")
    unknown = [f for f in flags if f not in ("bf16", "compile", "ckpt")]
    if not label or unknown:
        raise SystemExit(f"--variant {spec!r}: expected label[@checkout][+bf16][+compile][+ckpt]"
                         + (f" (unknown flag(s) {unknown})" if unknown else ""))
    return {"label": spec, "root": root or None, "precision": "bf16" if "bf16" in flags else "fp32",
            "compile": "compile" in flags, "ckpt": "ckpt" in flags}


def worker_args(variant: dict, args) -> list[str]:
    out = ["--mode", args.mode, "--threads", str(args.threads), "--precision", variant["precision"],
           "--batch", str(args.batch)]
    if variant["root"]:
        out += ["--root", variant["root"]]
    if args.golden:
        out += ["--golden", str(args.golden)]
    if variant["compile"]:
        out.append("--compile")
    if variant["ckpt"]:
        out.append("--ckpt")
    return out


# ---------------------------------------------------------------------------------------------------- worker side

def full_size_text_config(folder: Path) -> str:
    """Write an XLM-R-large-shaped config.json (24 layers of which the model keeps 12, hidden 1024, vocab 250002)."""
    from transformers import XLMRobertaConfig

    XLMRobertaConfig(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                     intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                     pad_token_id=1, bos_token_id=0, eos_token_id=2).save_pretrained(str(folder))
    return str(folder)


def full_size_model_config(text_dir: str) -> dict:
    """The pre-training model config at full size (Swin-B 224, 12 text layers, embed_dim 256), no weights loaded."""
    return {"vision_config": "swin_base_224", "image_res": 224, "text_encoder": text_dir, "text_num_hidden_layers": 12,
            "embed_dim": 256, "temp": 0.07, "load_text_params": False, "load_vision_params": False}


def synthetic_batches(bs: int, vocab: int, image_res: int = 224, num_patches: int = 49, seed: int = 0,
                      padded: bool = True, second_caption: bool = True, region_images: int | None = None,
                      device="cpu") -> dict:
    """Batches shaped like the golden ones: a (image + 40-token captions, 12 masks; a second caption unless
    ``second_caption`` is False), b (two 64-token texts, 20 masks), c (regions: bs texts on ``region_images``
    images, default bs // 2, with boxes). With ``padded`` half the rows are padded to 3/4 of the length."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def text(length, masks, suffix=""):
        ids = torch.randint(4, vocab - 1, (bs, length), generator=g)
        ids[:, 0] = 0
        atts = torch.ones_like(ids)
        if padded:
            atts[bs // 2:, length * 3 // 4:] = 0
        ids[atts == 0] = 1
        pos = torch.stack([torch.randperm(length * 3 // 4 - 1, generator=g)[:masks] + 1 for _ in range(bs)])
        masked = ids.clone().scatter_(1, pos, vocab - 1)
        return {f"text_ids{suffix}": ids, f"text_atts{suffix}": atts, f"text_ids_masked{suffix}": masked,
                f"masked_pos{suffix}": pos, f"masked_ids{suffix}": torch.gather(ids, 1, pos)}

    images = region_images or max(1, bs // 2)
    region_atts = torch.zeros(bs, 1 + num_patches, dtype=torch.long)
    region_atts[:, 0] = 1
    region_atts[:, 1:num_patches // 3] = 1
    batches = {
        "a": {"image": torch.randn(bs, 3, image_res, image_res, generator=g), **text(40, 12),
              **(text(40, 12, "_2") if second_caption else {})},
        "b": {"image": None, **text(64, 20), **text(64, 20, "_2")},
        "c": {"image": torch.randn(images, 3, image_res, image_res, generator=g), **text(40, 12),
              "image_atts": region_atts, "idx_to_group_img": torch.arange(bs) % images,
              "target_bbox": torch.rand(bs, 4, generator=g) * 0.4 + 0.3, "is_image": (torch.arange(bs) == 0).float(),
              "ret_bbox_loss": True},
    }
    return {name: {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            for name, batch in batches.items()}


def build_worker_model(args):
    """(model in train mode, batches) for the worker's mode."""
    import torch

    if args.mode == "tiny":
        from models.golden import build_golden_model, golden_inputs

        golden = common.golden_dir(args.golden)
        torch.manual_seed(0)
        model = build_golden_model(golden, "sdpa").train()
        batches = golden_inputs(golden)
    else:
        from models.factory import create_model

        text_dir = full_size_text_config(Path(tempfile.mkdtemp(prefix="xlmr-large-shape-")))
        torch.manual_seed(0)
        model = create_model("cclm_pretrain", full_size_model_config(text_dir)).train()
        batches = synthetic_batches(args.batch, model.text_encoder.config.vocab_size)
    if args.ckpt:
        model.set_grad_checkpointing(True)
    return model, batches


def run_worker(args) -> None:
    import torch

    common.add_repo_to_path(args.root)
    torch.set_num_threads(args.threads)
    model, batches = build_worker_model(args)
    runner = torch.compile(model) if args.compile else model
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.precision == "bf16" \
        else contextlib.nullcontext
    params = sum(p.numel() for p in model.parameters())

    def step(batch: dict) -> None:
        with autocast():
            losses = runner(**batch)
        sum(losses.values()).backward()
        model.zero_grad(set_to_none=True)

    def handle(request: dict) -> dict:
        batch = batches[request["batch"]]
        times = [common.timed(lambda: step(batch)) for _ in range(int(request.get("steps", 1)))]
        return {"wall": [w for w, _ in times], "cpu": [c for _, c in times], "peak_rss_mib": common.peak_rss_mib(),
                "rss_mib": common.rss_mib()}

    common.serve(handle, {"params": params, "rss_after_build_mib": common.peak_rss_mib()})


# ---------------------------------------------------------------------------------------------------- parent side

def batch_size(args) -> int:
    """Samples (texts) per step: the golden batches hold 16; full mode uses --batch."""
    return 16 if args.mode == "tiny" else args.batch


def reference_medians(golden: Path | None) -> dict:
    if golden is None:
        return {}
    timing = json.loads((golden / "tiny_losses.json").read_text()).get(REFERENCE_MEDIANS_KEY, {})
    return {name: entry["median"] for name, entry in timing.items()}


def measure(args) -> dict:
    variants = [parse_variant(v) for v in (args.variant or ["now"])]
    script = Path(__file__).resolve()
    results = {v["label"]: {b: {"wall": [], "cpu": []} for b in BATCHES} for v in variants}
    facts = {}
    # Workers alive at once alternate step by step (tiny: all of them; full: --together, for memory).
    together = args.together or (len(variants) if args.mode == "tiny" else 1)
    groups = [variants[i:i + together] for i in range(0, len(variants), together)]
    for group in groups:
        workers = {v["label"]: common.Worker(script, worker_args(v, args)) for v in group}
        try:
            for label, worker in workers.items():
                facts[label] = dict(worker.ready)
            for name in BATCHES:
                for label, worker in workers.items():
                    worker.ask({"batch": name, "steps": args.warmup})
                for _ in range(args.steps):
                    for label, worker in workers.items():
                        answer = worker.ask({"batch": name, "steps": 1})
                        results[label][name]["wall"] += answer["wall"]
                        results[label][name]["cpu"] += answer["cpu"]
                        facts[label]["peak_rss_mib"] = answer["peak_rss_mib"]
        finally:
            for worker in workers.values():
                worker.close()
    return {"variants": variants, "results": results, "workers": facts}


def report(args, measured: dict) -> dict:
    ref = reference_medians(args.golden) if args.mode == "tiny" else {}
    rows = []
    first = measured["variants"][0]["label"]
    for variant in measured["variants"]:
        label = variant["label"]
        for name in BATCHES:
            wall = common.summarize(measured["results"][label][name]["wall"])
            cpu = common.summarize(measured["results"][label][name]["cpu"])
            base = common.summarize(measured["results"][first][name]["wall"])["median"]
            bs = batch_size(args)
            rows.append({"variant": label, "batch": name, "median_s": wall["median"], "min_s": wall["min"],
                         "cpu_s": cpu["median"], "samples_per_s": bs / wall["median"],
                         "vs_first": base / wall["median"],
                         "reference_s": ref.get(name), "vs_reference": (ref[name] / wall["median"]) if name in ref
                         else None, "peak_rss_mib": measured["workers"][label].get("peak_rss_mib"),
                         "wall_all": wall["all"]})
    common.print_table(rows, [("variant", "variant"), ("batch", "batch"), ("median_s", "median s"),
                              ("min_s", "min s"), ("cpu_s", "cpu s"), ("samples_per_s", "samples/s"),
                              ("vs_first", f"x vs {first}"), ("reference_s", "ref s"),
                              ("vs_reference", "x vs ref"), ("peak_rss_mib", "peak RSS MiB")])
    return {"bench": f"pretrain_step_{args.mode}", "mode": args.mode, "threads": args.threads, "steps": args.steps,
            "warmup": args.warmup, "batch": batch_size(args), "rows": rows,
            "workers": measured["workers"], "machine": common.machine_facts(), "command": " ".join(sys.argv)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", choices=("tiny", "full"))
    parser.add_argument("golden", nargs="?", type=Path, help="golden fixture folder (tiny mode)")
    parser.add_argument("--variant", action="append", help="label[@checkout][+bf16][+compile][+ckpt] (repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2, help="batch size of the full-size mode")
    parser.add_argument("--together", type=int, help="variants alive (and alternating) at once; default: all in "
                                                     "tiny mode, 1 in full mode (each full-size worker holds ~8 GB)")
    parser.add_argument("--json", help="write the figures to this file (also to $OUT/<bench>.json when $OUT is set)")
    # worker-side options
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", dest="worker_mode", help=argparse.SUPPRESS)
    parser.add_argument("--golden", dest="worker_golden", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.mode, args.golden = args.worker_mode, args.worker_golden
        run_worker(args)
        return 0
    if args.mode is None:
        parser.error("choose a mode: tiny GOLDEN_DIR, or full")
    if args.mode == "tiny":
        args.golden = common.golden_dir(args.golden)
    common.add_repo_to_path()
    print(f"pre-training step ({args.mode}), {args.threads} threads, {args.warmup} warm-up + {args.steps} timed steps",
          flush=True)
    result = report(args, measure(args))
    common.write_json(result, args.json)
    return 0


if __name__ == "__main__":
    common.use_passive_openmp()
    sys.exit(main())
