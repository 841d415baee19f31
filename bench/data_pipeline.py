#!/usr/bin/env python3
"""Pre-training data pipeline throughput: images (or texts) per second, and per worker, of dataset/pretrain.py.

    python3 bench/data_pipeline.py [--workers 0 1 2] [--image-res 224] [--batch 16] [--batches 20]

The loaders read the synthetic world (``resolve_data_root({"synthetic": {"images": 200, "seed": 0}})``, generated
once under cache/) through the tiny 4M config, with the image size and batch size set here. Each source
(images, regions, texts_para) is timed with each worker count: warm-up batches (worker start-up and the batches
prefetched meanwhile are excluded: the loaders' workers are persistent), then ``--batches`` batches. Loading only:
no model runs. With 0 workers the main process loads, with ``--threads`` torch threads (1, like a worker).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SOURCES = ("images", "regions", "texts_para")


def loader_config(image_res: int, batch: int, workers: int) -> dict:
    """The tiny 4M pre-training config with this image size, batch size and worker count in every block."""
    from utils.config import load_config

    config = load_config(common.REPO / "configs" / "tiny" / "pretrain_cclm_4m.yaml",
                         schema=common.REPO / "configs" / "base" / "pretrain.yaml")
    config["image_res"] = image_res
    for name in SOURCES:
        config[name].update(batch_size=batch, num_workers=workers)
    config["regions"]["max_images"] = max(1, batch // 2)
    return config


def items_in(batch: dict, source: str) -> tuple[int, int]:
    """(images, texts) in a batch."""
    images = batch["image"].shape[0] if batch.get("image") is not None else 0
    return images, batch["text_ids"].shape[0]


def time_loader(loader, source: str, batches: int) -> dict:
    iterator = iter(loader)
    # Worker start-up, then whatever the workers prefetched meanwhile, is not timed.
    for _ in range(1 + (loader.prefetch_factor or 0) * loader.num_workers):
        next(iterator)
    images = texts = 0
    start = time.perf_counter()
    for _ in range(batches):
        n_img, n_txt = items_in(next(iterator), source)
        images, texts = images + n_img, texts + n_txt
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": images, "texts": texts}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image-res", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the main process (DataLoader workers use 1 each)")
    parser.add_argument("--json", help="write the figures here (also to $OUT/data_pipeline.json when $OUT is set)")
    args = parser.parse_args(argv)
    common.add_repo_to_path()
    import torch

    from dataset.pretrain import build_pretrain_loaders
    from dataset.tokenizer import load_tokenizer
    from tasks.environment import resolve_data_root

    torch.set_num_threads(args.threads)
    root = resolve_data_root({"synthetic": {"images": 200, "seed": 0}})
    tokenizer = load_tokenizer(root / "tokenizer")
    print(f"data pipeline: synthetic world {root.name}, {args.image_res} px, batch {args.batch}, "
          f"{args.batches} timed batches per loader", flush=True)
    rows = []
    for workers in args.workers:
        config = loader_config(args.image_res, args.batch, workers)
        loaders = build_pretrain_loaders(config, tokenizer, root=root, seed=0, repeat=True)
        for source in SOURCES:
            t = time_loader(loaders[source], source, args.batches)
            per_s = (t["images"] or t["texts"]) / t["seconds"]
            rows.append({"source": source, "workers": workers, "unit": "images" if t["images"] else "texts",
                         "per_s": per_s, "per_s_per_worker": per_s / max(1, workers),
                         "batches_per_s": args.batches / t["seconds"], "pin_memory":
                         loaders[source].pin_memory, "persistent_workers": loaders[source].persistent_workers})
        del loaders
    common.print_table(rows, [("source", "source"), ("workers", "workers"), ("unit", "unit"), ("per_s", "per s"),
                              ("per_s_per_worker", "per s per worker"), ("batches_per_s", "batches/s"),
                              ("persistent_workers", "persistent")])
    result = {"bench": "data_pipeline", "image_res": args.image_res, "batch": args.batch, "batches": args.batches,
              "rows": rows, "machine": common.machine_facts(), "command": " ".join(sys.argv)}
    common.write_json(result, args.json)
    return 0


if __name__ == "__main__":
    common.use_passive_openmp()
    sys.exit(main())
