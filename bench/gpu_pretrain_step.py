#!/usr/bin/env python3
"""One-shot GPU measurement of the full-size CCLM pre-training step in bf16: time, MFU and peak memory per batch size.

    python3 bench/gpu_pretrain_step.py [--batches 32 64 128 192 256] [--kinds image para region] [--budget-s 420]
                                       [--compile] [--grad-checkpointing]

Prepared for a lent GPU (one H200, one run of under 8 minutes): nothing is downloaded (Swin-B 224 and a 12-layer
XLM-R-large-shaped text/fusion encoder with random weights, built from a config made in code), every batch size is
tried in its own guard (an out-of-memory error is recorded and the larger sizes of that kind are skipped), and the
whole run stops starting new measurements after ``--budget-s`` seconds. It prints a table and writes
``$OUT/gpu_pretrain_step.json`` when $OUT is set (or ``--json``).

The step is what Pretrain.py does per batch: bf16 autocast forward, backward, fused AdamW update, zero_grad. Kinds:
``image`` (image + one 40-token caption, 12 masks: ITC, ITM, MLM), ``para`` (two 64-token texts, 20 masks: TTC,
TTM, MLM) and ``region`` (B texts on 3B/8 images, as the reference's 128 texts on 48 images: ITC, ITM, MLM, boxes).
Texts are not padded, so the FLOP count below is exact for the computation that runs.

FLOP count (``train_step_flops``; multiply-accumulates x 2, forward x 3 for forward + backward, as usual for MFU;
LayerNorm, softmax, GELU and the optimiser are not counted). With D = 1024 (text width), F = 4096, V = 250002,
E = 256, L the text length, S the memory length, M the masks per text:
* Swin-B per image: patch embedding 56^2*48*128; per block 12*T*C^2 (qkv, proj, MLP 4x) + 2*T*49*C (window
  attention); patch merging T_s*8*C_{s-1}^2; stages (T, C, depth) = (3136,128,2) (784,256,2) (196,512,18) (49,1024,2).
* a text layer on R rows: R*L*(4D^2 + 2DF) + 2*R*L^2*D; a fusion layer adds R*L*2D^2 (cross Q, O) + 2*R*L*S*D and,
  once per memory row rather than per text row (our implementation), 2*S*D_mem*D for its keys and values.
* the last fusion layer computes only the positions that are read (the CLS for ITM/boxes, the M masked positions for
  MLM, padded to the largest P): keys/values of all L tokens, everything else for P positions.
* passes: text layers (6) on captions + masked captions (+ second text); fusion layers (6) on 3B ITM pairs + B MLM
  rows (+ B box rows); MLM head M*(D^2 + D*V) per text; projections, ITM/box heads and similarity matrices.
MFU = counted FLOPs / step time / peak bf16 dense FLOP/s of the GPU (989.4 TFLOP/s for H100/H200 SXM; ``--peak-tflops``
otherwise). The script also counts the FLOPs of one step with torch.utils.flop_counter.FlopCounterMode as a check.
"""
from __future__ import annotations

import argparse
import gc
import math
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from pretrain_step import full_size_model_config, full_size_text_config, synthetic_batches  # noqa: E402

KINDS = {"image": "a", "para": "b", "region": "c"}
# Dense bf16 peaks by device-name substring, first match wins (the NVL / PCIe parts run at lower clocks and power).
PEAK_BF16_TFLOPS = {"H200 NVL": 835.5, "H100 NVL": 835.5, "H100 PCIe": 756.5, "H200": 989.4, "H100": 989.4,
                    "GH200": 989.4, "A100": 312.0, "L40S": 362.05, "A10G": 70.0}
TEXT_LENGTH = {"image": 40, "para": 64, "region": 40}
MASKS = {"image": 12, "para": 20, "region": 12}


# ---------------------------------------------------------------------------------------------------- FLOP count

def swin_macs(vision: dict) -> int:
    """Multiply-accumulates of one Swin forward (patch embedding, blocks, patch merging) for one image."""
    side = vision["image_res"] // 4
    macs = side * side * 3 * 16 * vision["embed_dim"]
    prev = None
    for stage, depth in enumerate(vision["depths"]):
        channels = vision["embed_dim"] * 2 ** stage
        tokens = (side // 2 ** stage) ** 2
        window = min(vision["window_size"], side // 2 ** stage) ** 2
        if prev is not None:
            macs += tokens * 8 * prev * prev  # 2x2 merge: 4C -> 2C
        macs += depth * (12 * tokens * channels * channels + 2 * tokens * window * channels)
        prev = channels
    return macs


def text_layer_macs(rows: int, length: int, d: int, f: int) -> int:
    """One self-attention layer (projections, attention, feed-forward) on rows x length tokens."""
    return rows * length * (4 * d * d + 2 * d * f) + 2 * rows * length * length * d


def fusion_layer_macs(rows: int, length: int, d: int, f: int, memory_len: int, positions: int | None = None) -> int:
    """A fusion layer without its memory keys/values; with ``positions`` only that many query positions per row."""
    if positions is None:
        return text_layer_macs(rows, length, d, f) + rows * length * 2 * d * d + 2 * rows * length * memory_len * d
    return rows * (length * 2 * d * d + positions * (2 * d * d + 2 * d * f) + 2 * positions * length * d
                   + positions * 2 * d * d + 2 * positions * memory_len * d)


def train_step_flops(kind: str, batch: int, vision: dict, d: int, f: int, vocab: int, text_layers: int,
                     fusion_start: int, embed_dim: int = 256) -> dict:
    """FLOPs (forward + backward = 3 x 2 x MACs) of one step of ``kind`` at ``batch`` texts, by component."""
    length, masks = TEXT_LENGTH[kind], MASKS[kind]
    num_fusion = text_layers - fusion_start
    d_vis = vision["vision_width"]
    patches = (vision["image_res"] // 2 ** (len(vision["depths"]) + 1)) ** 2
    images = region_images(batch) if kind == "region" else (batch if kind == "image" else 0)
    macs = {"vision": images * swin_macs(vision)}
    text_rows = 3 * batch if kind == "para" else 2 * batch  # texts (+ second text) + masked texts
    macs["text_layers"] = fusion_start * text_layer_macs(text_rows, length, d, f)
    fusion_rows = 4 * batch + (batch if kind == "region" else 0)  # 3B ITM pairs + B MLM rows (+ B box rows)
    memory_len = length if kind == "para" else 1 + patches
    positions = max(masks, 1)
    macs["fusion_layers"] = (num_fusion - 1) * fusion_layer_macs(fusion_rows, length, d, f, memory_len) + \
        fusion_layer_macs(fusion_rows, length, d, f, memory_len, positions)
    memory_rows, memory_width = {"image": (batch, d_vis), "para": (2 * batch, d),
                                 "region": (batch + images, d_vis)}[kind]
    macs["memory_kv"] = num_fusion * memory_rows * memory_len * 2 * memory_width * d
    macs["mlm_head"] = batch * masks * (d * d + d * vocab)
    feats = 2 * batch if kind == "para" else batch
    macs["heads"] = feats * d * embed_dim + (images if kind == "image" else 0) * d_vis * embed_dim + \
        2 * 3 * feats * feats * embed_dim + 3 * batch * (d * 2 * d + 2 * d * 2) + \
        (batch * (d * 2 * d + 2 * d * 4) if kind == "region" else 0)
    flops = {name: 6 * value for name, value in macs.items()}
    flops["total"] = sum(flops.values())
    return flops


def region_images(batch: int) -> int:
    """Images of a region batch: the reference's 48 images per 128 texts."""
    return max(1, round(batch * 3 / 8))


# ---------------------------------------------------------------------------------------------------- the step

def build(args, device):
    """(model, optimizer, vision config dict, text config) at full size (or the small CPU check size)."""
    import torch

    from models.factory import create_model
    from models.vision import load_vision_config
    from utils.optim import build_optimizer

    folder = Path(tempfile.mkdtemp(prefix="cclm-gpu-bench-"))
    if args.size == "full":
        config = full_size_model_config(full_size_text_config(folder))
    else:  # a small model with the same structure, for checking this script on a CPU
        from transformers import XLMRobertaConfig

        # The text width must equal the vision width (128): parallel text uses text states as the fusion memory.
        XLMRobertaConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=256, max_position_embeddings=80, type_vocab_size=1,
                         pad_token_id=1).save_pretrained(str(folder))
        config = {"vision_config": "swin_tiny_test_224", "image_res": 224, "text_encoder": str(folder),
                  "text_num_hidden_layers": 4, "embed_dim": 32, "load_text_params": False,
                  "load_vision_params": False}
    torch.manual_seed(0)
    model = create_model("cclm_pretrain", config).to(device).train()
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    optimizer = build_optimizer(model, {"opt": "adamW", "lr": 1e-4, "weight_decay": 0.01, "lr_mult": 2},
                                model.init_params)
    return model, optimizer, load_vision_config(config["vision_config"]), model.text_encoder.config


def make_batch(kind: str, batch: int, vocab: int, vision: dict, device) -> dict:
    patches = (vision["image_res"] // 2 ** (len(vision["depths"]) + 1)) ** 2
    made = synthetic_batches(batch, vocab, image_res=vision["image_res"], num_patches=patches, padded=False,
                             second_caption=False, region_images=region_images(batch), device=device)
    return made[KINDS[kind]]


def run_step(model, optimizer, batch: dict, device) -> None:
    import torch

    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        losses = model(**batch)
    sum(losses.values()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(model, optimizer, batch, device, warmup: int, steps: int) -> list[float]:
    """Seconds per step (CUDA-synchronised) after ``warmup`` steps."""
    import torch

    for _ in range(warmup):
        run_step(model, optimizer, batch, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run_step(model, optimizer, batch, device)
        sync()
        times.append(time.perf_counter() - start)
    return times


def counted_flops(model, optimizer, batch, device) -> int:
    """FLOPs of one step as torch.utils.flop_counter counts them (matmuls, convolutions, SDPA)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run_step(model, optimizer, batch, device)
    return int(counter.get_total_flops())


def peak_flops(device, override: float | None) -> tuple[float | None, str]:
    import torch

    if override:
        return override * 1e12, f"--peak-tflops {override}"
    if device.type != "cuda":
        return None, "cpu"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12, name
    return None, name


def is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        try:
            torch.cuda.empty_cache()
        except RuntimeError:  # after a sticky CUDA error this raises too; the row already says what happened
            pass


# ---------------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 192, 256])
    parser.add_argument("--kinds", nargs="+", choices=tuple(KINDS), default=list(KINDS))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no new measurement after this")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile at the largest image batch that fitted (half the budget left)")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the profiled step (by default one step of the largest image batch that fitted is "
                             "profiled and its top operators written to $OUT/gpu_profile.txt and the JSON)")
    parser.add_argument("--peak-tflops", type=float, help="peak bf16 dense TFLOP/s (default: from the GPU name)")
    parser.add_argument("--size", choices=("full", "small"), default="full", help=argparse.SUPPRESS)
    parser.add_argument("--allow-cpu", action="store_true", help="run on CPU (to check the script; no MFU)")
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    common.add_repo_to_path()
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("no CUDA device: this script measures a GPU (use --allow-cpu --size small to check it)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    peak, peak_source = peak_flops(device, args.peak_tflops)
    model, optimizer, vision, text = build(args, device)
    shape = dict(vision=vision, d=text.hidden_size, f=text.intermediate_size, vocab=text.vocab_size,
                 text_layers=text.num_hidden_layers, fusion_start=model.text_encoder.fusion_layer,
                 embed_dim=model.config.get("embed_dim", 256))
    print(f"device {peak_source}; {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters; "
          f"built in {time.perf_counter() - started:.0f} s", flush=True)
    rows: list[dict] = []
    facts = _machine_facts()

    def save(quiet: bool = True) -> None:
        """The JSON so far: written after every row, so a run killed at its time limit keeps what it measured."""
        result = {"bench": "gpu_pretrain_step", "device": peak_source, "peak_flops": peak, "rows": rows,
                  "grad_checkpointing": args.grad_checkpointing, "size": args.size,
                  "elapsed_s": time.perf_counter() - started, "machine": facts, "command": " ".join(sys.argv)}
        common.write_json(result, args.json, quiet=quiet)

    # A time limit's SIGTERM becomes an exception, so the finally below still prints and saves.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run_all(args, model, optimizer, shape, device, peak, started, rows, on_row=save)
    finally:  # whatever happened, what was measured is printed and saved
        signal.signal(signal.SIGTERM, previous)
        common.print_table([r for r in rows if "median_s" in r],
                           [("kind", "kind"), ("batch", "batch"), ("compiled", "compiled"), ("median_s", "step s"),
                            ("samples_per_s", "samples/s"), ("tflops", "TFLOP/s"), ("mfu", "MFU"),
                            ("peak_mem_gib", "peak GiB"), ("counter_vs_formula", "counter/formula")])
        save(quiet=False)
    return 0


def _machine_facts() -> dict:
    try:
        return common.machine_facts()
    except Exception as err:  # noqa: BLE001 - the figures matter more than the machine description
        return {"error": f"{type(err).__name__}: {err}"}


def run_all(args, model, optimizer, shape, device, peak, started, rows: list, on_row=lambda: None) -> None:
    """Every (kind, batch size) in turn within the time budget, then the optional compiled run; appends rows
    (calling ``on_row`` after each)."""
    import torch

    fitted = {}
    for kind in args.kinds:
        for batch_size in sorted(args.batches):
            if time.perf_counter() - started > args.budget_s:
                rows.append({"kind": kind, "batch": batch_size, "status": "skipped (time budget)"})
                continue
            row = {"kind": kind, "batch": batch_size, "compiled": False}
            rows.append(row)  # in the saved JSON as "running" until it is measured
            row.update(status="running")
            on_row()
            row.update(guarded(measure_one, model, optimizer, kind, batch_size, shape, device, args, peak,
                               count=batch_size == min(args.batches)))
            print(_row_line(row), flush=True)
            on_row()
            if row["status"] != "ok":
                break  # larger batches of this kind would fail the same way
            fitted[kind] = batch_size
    if args.profile and "image" in fitted and time.perf_counter() - started < args.budget_s:
        rows.append({"kind": "image", "batch": fitted["image"], "profile": guarded(
            profile_one, model, optimizer, fitted["image"], shape, device)})
        on_row()
    if not (args.compile and "image" in fitted):
        return
    # Compiling the full model takes minutes: only when at least half of the budget is left.
    row = {"kind": "image", "batch": fitted["image"], "compiled": True}
    rows.append(row)
    if time.perf_counter() - started >= args.budget_s / 2:
        row["status"] = "skipped (less than half of the time budget left)"
        on_row()
        return
    row["status"] = "running (compiling)"
    on_row()
    compile_started = time.perf_counter()
    row.update(guarded(measure_one, torch.compile(model), optimizer, "image", fitted["image"], shape, device,
                       args, peak))
    row["with_compile_s"] = time.perf_counter() - compile_started  # compile + warm-up + timed steps
    print(_row_line(row), flush=True)
    on_row()


def guarded(fn, *args, **kwargs) -> dict:
    """``fn``'s result, or {"status": "OOM"} / {"status": "error: ..."}: one failing size must not end the run."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - a one-shot run records every failure and goes on
        status = "OOM" if is_oom(err) else f"error: {type(err).__name__}: {str(err).splitlines()[0][:300]}"
        return {"status": status}
    finally:
        free_memory()


def measure_one(model, optimizer, kind, batch_size, shape, device, args, peak, count=False) -> dict:
    """Time one (kind, batch size); FLOPs from the formula (and the counter when ``count``); peak memory."""
    import torch

    batch = make_batch(kind, batch_size, shape["vocab"], shape["vision"], device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        times = measure(model, optimizer, batch, device, args.warmup, args.steps)
    finally:
        optimizer.zero_grad(set_to_none=True)  # after an OOM the gradients would hold the memory
    median = sorted(times)[len(times) // 2]
    flops = train_step_flops(kind, batch_size, **shape)
    out = {"median_s": median, "min_s": min(times), "samples_per_s": batch_size / median,
           "flops": flops["total"], "flops_by_part": flops, "tflops": flops["total"] / median / 1e12,
           "mfu": flops["total"] / median / peak if peak else None, "status": "ok"}
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if count:
        out["counter_flops"] = counted_flops(model, optimizer, batch, device)
        out["counter_vs_formula"] = out["counter_flops"] / flops["total"]
    return out


def profile_one(model, optimizer, batch_size, shape, device, top: int = 40) -> dict:
    """One profiled step (after one warm-up) of an image batch: the operators that took the most device time (CPU
    time without a GPU), as a table; also written to $OUT/gpu_profile.txt when $OUT is set."""
    import os

    import torch
    from torch.profiler import ProfilerActivity, profile

    batch = make_batch("image", batch_size, shape["vocab"], shape["vision"], device)
    run_step(model, optimizer, batch, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run_step(model, optimizer, batch, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=top, max_name_column_width=60)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        Path(os.environ["OUT"], "gpu_profile.txt").write_text(f"image batch {batch_size}, sorted by {sort_by}\n"
                                                              + table)
    print(f"profiled one image step at batch {batch_size} (top {top} operators by {sort_by})", flush=True)
    return {"status": "ok", "sort_by": sort_by, "table": table}


def _row_line(row: dict) -> str:
    if row.get("status") != "ok":
        return f"{row['kind']:>6} batch {row['batch']:>4}: {row.get('status')}"
    mfu = f"{100 * row['mfu']:.1f}%" if row.get("mfu") else "-"
    return (f"{row['kind']:>6} batch {row['batch']:>4}{' compiled' if row.get('compiled') else ''}: "
            f"{row['median_s'] * 1000:.1f} ms/step, {row['samples_per_s']:.0f} samples/s, "
            f"{row['tflops']:.0f} TFLOP/s, MFU {mfu}, peak {row.get('peak_mem_gib', math.nan):.1f} GiB")


if __name__ == "__main__":
    sys.exit(main())
