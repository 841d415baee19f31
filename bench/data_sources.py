#!/usr/bin/env python3
"""Image-text loading throughput by storage format: webdataset tar shards (local disk and S3) against our jsonl shards
with base64 images, as images per second per data-loader worker and as ratios measured in one run; then how many
workers a GPU rank needs to keep up with the full-size pre-training step (an estimate, see --mfu).

    python3 bench/data_sources.py [--workers 1] [--image-res 224] [--source-size 320] [--samples 480]
                                  [--batch 16] [--batches 12] [--rounds 3]

The samples are the synthetic world's image-text records (generated once under cache/) with their images resized
to ``--source-size`` px JPEGs (quality 90: web images as img2dataset stores them) and repeated to ``--samples``;
the same samples are written as jsonl shards (base64), as tar shards on the local disk, and as the same tar shards on
a local S3 server (moto, bench/local_s3.py: an S3-compatible server in a separate process on this machine, so its
CPU time competes with the workers'). Each variant is dataset/pretrain.py's ``images`` loader (decode, augment to
``--image-res``, tokenise, mask, collate) with ``--workers`` workers; the variants are timed in turn, round after
round (the machine's load is shared), after their workers started and their prefetched batches were drained. Each
round also reads one whole pass of every variant without decoding, in the main process ("read only": the storage's
share of the cost).

"Worker CPU ms/image" is the CPU time the workers used per image (from /proc), which does not depend on how busy
the machine is; "images/s per worker core" (its inverse) is what one worker delivers with a core to itself.

GPU estimate: the images a rank consumes per second at the full-size 4M step (per iteration one parallel-text step
and, with probability 0.5 each, an image step or a region step of batch ``--gpu-batch``), from the FLOP count of
bench/gpu_pretrain_step.py at ``--mfu`` of an H200's 989.4 TFLOP/s dense bf16 peak (not a measurement), and the
workers that needs: images/s x worker CPU seconds per image, each worker on its own core of this machine's kind.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from data_pipeline import loader_config  # noqa: E402

H200_BF16_FLOPS = 989.4e12


def make_samples(world: Path, count: int, size: int) -> list[tuple[bytes, dict]]:
    """(JPEG bytes at ``size`` px, caption) pairs from the world's image-text records, repeated to ``count``."""
    from PIL import Image

    records = [json.loads(line) for path in sorted((world / "pretrain" / "image_text").glob("*.jsonl"))
               for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    samples = []
    for record in records[:count]:
        image = Image.open(io.BytesIO(base64.b64decode(record["binary"]))).convert("RGB").resize((size, size))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=90)
        samples.append((out.getvalue(), {"caption": record["caption"]}))
    return [samples[i % len(samples)] for i in range(count)]


def write_sources(samples, folder: Path, shard_size: int, s3) -> dict[str, str]:
    """The samples as jsonl shards, local tar shards and tar shards on S3; variant name -> train_file entry."""
    from dataset.prepare import ShardOutput

    for name, fmt in (("jsonl", "jsonl"), ("tar", "tar")):
        with ShardOutput(str(folder / name), fmt, shard_size, overwrite=True) as output:
            for image, fields in samples:
                output.add_image(image, fields, where="bench sample")
    bucket = s3.make_bucket("bench-data")
    fs = s3.filesystem()
    fs.put([str(p) for p in sorted((folder / "tar").iterdir())], "bench-data/tar/")
    return {"jsonl + base64, local": str(folder / "jsonl"), "tar, local": str(folder / "tar"),
            "tar, S3 (local moto server)": f"{bucket}/tar/"}


def workers_cpu_seconds(iterator) -> float:
    """User + system CPU seconds the iterator's worker processes have used (from /proc; Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for process in getattr(iterator, "_workers", []):  # DataLoader's worker processes (a private attribute)
        with open(f"/proc/{process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def drain_and_time(iterator, skip: int, batches: int) -> tuple[float, float]:
    """(wall seconds, workers' CPU seconds) for ``batches`` batches after ``skip`` untimed ones (those the workers
    prefetched meanwhile)."""
    for _ in range(skip):
        next(iterator)
    start, cpu = time.perf_counter(), workers_cpu_seconds(iterator)
    for _ in range(batches):
        next(iterator)
    return time.perf_counter() - start, workers_cpu_seconds(iterator) - cpu


def raw_read_seconds(loader) -> float:
    """Seconds to read one pass of the loader's samples without decoding them (the storage part of the cost)."""
    reader = loader.dataset.reader
    start = time.perf_counter()
    for _ in reader.role_records(0, 0, 1):
        pass
    return time.perf_counter() - start


def gpu_images_per_second(batch: int, mfu: float) -> dict:
    """Images per second one GPU rank consumes at the full-size 4M step (FLOP estimate at ``mfu`` of an H200)."""
    from gpu_pretrain_step import region_images, train_step_flops

    from models.vision import load_vision_config

    vision = load_vision_config("swin_base_224")
    flops = {kind: train_step_flops(kind, batch, vision, 1024, 4096, 250002, 12, 6)["total"]
             for kind in ("image", "para", "region")}
    iteration_s = (flops["para"] + 0.5 * flops["image"] + 0.5 * flops["region"]) / (H200_BF16_FLOPS * mfu)
    images = 0.5 * batch + 0.5 * region_images(batch)
    return {"batch": batch, "mfu": mfu, "iteration_s": iteration_s, "images_per_s": images / iteration_s,
            "tflop_per_iteration": (flops["para"] + 0.5 * flops["image"] + 0.5 * flops["region"]) / 1e12}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1, help="data-loader workers per variant")
    parser.add_argument("--image-res", type=int, default=224)
    parser.add_argument("--source-size", type=int, default=320, help="side of the stored JPEGs")
    parser.add_argument("--samples", type=int, default=480)
    parser.add_argument("--shard-size", type=int, default=120)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gpu-batch", type=int, default=128, help="per-GPU batch of the full-size estimate")
    parser.add_argument("--mfu", type=float, nargs="+", default=[0.45, 0.30], help="MFUs of the GPU estimate")
    parser.add_argument("--json", help="write the figures here (also to $OUT/data_sources.json when $OUT is set)")
    args = parser.parse_args(argv)
    common.add_repo_to_path()
    import torch

    from dataset.pretrain import build_pretrain_loaders
    from dataset.tokenizer import load_tokenizer
    from local_s3 import LocalS3

    torch.set_num_threads(1)
    world = common.synthetic_world()
    tokenizer = load_tokenizer(world / "tokenizer")
    samples = make_samples(world, args.samples, args.source_size)
    with LocalS3() as s3, tempfile.TemporaryDirectory(prefix="cclm-data-bench-") as tmp:
        sources = write_sources(samples, Path(tmp), args.shard_size, s3)
        print(f"data sources: {args.samples} samples ({args.source_size} px JPEG, "
              f"{sum(len(s[0]) for s in samples) / len(samples) / 1024:.0f} KiB each) in shards of "
              f"{args.shard_size}; {args.image_res} px batches of {args.batch}, {args.workers} worker(s), "
              f"{args.rounds} rounds x {args.batches} batches; load average {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} cores", flush=True)
        iterators, skip = {}, 0
        for name, path in sources.items():
            config = loader_config(args.image_res, args.batch, args.workers)
            config.update(train_file=[path], train_file_regions=[], train_file_text=[], train_file_mono=[])
            loader = build_pretrain_loaders(config, tokenizer, seed=0, repeat=True, pin_memory=False)["images"]
            skip = 1 + (loader.prefetch_factor or 0) * loader.num_workers
            iterators[name] = (loader, iter(loader))
            next(iterators[name][1])  # workers started
        seconds = {name: [] for name in sources}
        cpu = {name: [] for name in sources}
        raw = {name: [] for name in sources}
        for _ in range(args.rounds):
            for name, (loader, iterator) in iterators.items():
                wall, used = drain_and_time(iterator, skip - 1, args.batches)
                seconds[name].append(wall)
                cpu[name].append(used)
                raw[name].append(raw_read_seconds(loader))
        del iterators
    baseline = None
    rows = []
    for name, values in seconds.items():
        per_s = args.batches * args.batch / statistics.median(values)
        baseline = baseline or per_s
        cpu_ms = 1000 * sum(cpu[name]) / (args.rounds * args.batches * args.batch)
        rows.append({"source": name, "workers": args.workers, "images_per_s": per_s,
                     "per_worker": per_s / max(1, args.workers), "x_vs_jsonl": per_s / baseline,
                     "cpu_ms_per_image": cpu_ms, "per_worker_core": 1000 / cpu_ms if cpu_ms else None,
                     "raw_read_per_s": args.samples / statistics.median(raw[name]), "seconds": values,
                     "cpu_seconds": cpu[name], "raw_read_seconds": raw[name]})
    common.print_table(rows, [("source", "source"), ("workers", "workers"), ("images_per_s", "images/s"),
                              ("per_worker", "per worker"), ("x_vs_jsonl", "x vs jsonl+base64"),
                              ("cpu_ms_per_image", "worker CPU ms/image"),
                              ("per_worker_core", "images/s per worker core"),
                              ("raw_read_per_s", "read only, samples/s")])
    estimates = [gpu_images_per_second(args.gpu_batch, mfu) for mfu in args.mfu]
    for estimate in estimates:  # a worker with a core of its own: the CPU time per image, not the loaded wall time
        needs = {row["source"]: math.ceil(estimate["images_per_s"] * row["cpu_ms_per_image"] / 1000) for row in rows}
        estimate["workers_needed"] = needs
        print(f"GPU estimate (H200, {estimate['mfu']:.0%} MFU, batch {estimate['batch']}): "
              f"{estimate['iteration_s'] * 1000:.0f} ms per 4M iteration, {estimate['images_per_s']:.0f} images/s "
              f"-> workers per rank: " + ", ".join(f"{k} {v}" for k, v in needs.items()))
    common.write_json({"bench": "data_sources", "args": vars(args), "rows": rows, "gpu_estimates": estimates,
                       "machine": common.machine_facts(), "command": " ".join(sys.argv)}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
