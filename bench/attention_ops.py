#!/usr/bin/env python3
"""The attention softmax at the tiny step's shapes: ATen's softmax vs ``models.fast_ops.softmax_last_dim``.

    python3 bench/attention_ops.py [--threads 2] [--rounds 40] [--json PATH]

Forward + backward of the softmax over the last dim, in bf16 and float32, at the shapes of the golden batches
(Swin stage 0 and 1 windows, text self-attention at 40 and 64 tokens, fusion cross-attention at 40 x 50). The two
variants alternate call by call, so both see the same load; the table gives medians in milliseconds.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SHAPES = {"swin stage 0 (1024 windows x 49 x 49)": (1024, 1, 49, 49),
          "swin stage 1 (256 x 2 heads)": (256, 2, 49, 49),
          "text self-attention, 40 tokens": (64, 4, 40, 40),
          "fusion cross-attention, 40 x 50": (64, 4, 40, 50),
          "text self-attention, 64 tokens": (64, 4, 64, 64)}


def time_pair(stock, fast, rounds: int) -> tuple[float, float]:
    """Median seconds of two callables, alternated call by call after two warm-up calls each."""
    for fn in (stock, fast, stock, fast):
        fn()
    times = ([], [])
    for _ in range(rounds):
        for fn, out in ((stock, times[0]), (fast, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return common.summarize(times[0])["median"], common.summarize(times[1])["median"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--json", help="write the figures to this file (also to $OUT/<bench>.json when $OUT is set)")
    args = parser.parse_args(argv)
    common.add_repo_to_path()
    import torch

    from models.fast_ops import softmax_last_dim

    torch.set_num_threads(args.threads)
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for name, shape in SHAPES.items():
            x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype).requires_grad_()
            grad = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
            stock, fast = time_pair(lambda: torch.softmax(x, dim=-1).backward(grad),
                                    lambda: softmax_last_dim(x).backward(grad), args.rounds)
            rows.append({"shape": name, "dtype": str(dtype).replace("torch.", ""), "stock_ms": stock * 1e3,
                         "fast_ops_ms": fast * 1e3, "speedup": stock / fast})
    print(f"softmax forward + backward, {args.threads} threads, median of {args.rounds} alternated calls")
    common.print_table(rows, [("shape", "shape"), ("dtype", "dtype"), ("stock_ms", "ATen ms"),
                              ("fast_ops_ms", "fast_ops ms"), ("speedup", "x")])
    common.write_json({"bench": "attention_ops", "threads": args.threads, "rounds": args.rounds, "rows": rows,
                       "machine": common.machine_facts(), "command": " ".join(sys.argv)}, args.json)
    return 0


if __name__ == "__main__":
    common.use_passive_openmp()
    sys.exit(main())
