#!/usr/bin/env python3
"""Resident memory of pre-training steps over time, per precision: is it flat after warm-up, and what is its peak?

    python3 bench/training_memory.py GOLDEN_DIR [--steps 300] [--precision fp32 --precision bf16]

The golden fixture's model (train mode: dropout, drawn hard negatives) with the project's AdamW
(``utils.optim.build_optimizer``, the fixture config's optimiser), cycling the three golden batches (a, b, c),
forward + backward + optimiser step, as training runs them. The hard negatives are drawn every step, so the
fusion pass's used text length and real-token count change from step to step, as with real data. Each precision
runs in its own worker process (RSS is per process); the workers alternate step by step in one run, so they share
the machine's load. Printed: the resident set (RSS, from /proc) at chosen steps, its growth after warm-up
(``--warmup`` steps) and the peak (``ru_maxrss``), beside the reference's peaks (1.96 GB float32, 1.82 GB bf16 over
~180 steps at these shapes, measured with the authors' code on this project's development machine).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BATCHES = ("a", "b", "c")
REFERENCE_PEAK_MIB = {"fp32": 1.96e9 / 2 ** 20, "bf16": 1.82e9 / 2 ** 20}


def run_worker(args) -> None:
    import contextlib

    import torch
    from ruamel.yaml import YAML

    common.add_repo_to_path()
    from models.golden import build_golden_model, find_config, golden_inputs
    from utils.optim import build_optimizer

    torch.set_num_threads(args.threads)
    golden = common.golden_dir(args.golden)
    torch.manual_seed(0)
    model = build_golden_model(golden, "sdpa").train()
    optimizer = build_optimizer(model, YAML(typ="safe").load(find_config(golden).read_text())["optimizer"])
    batches = golden_inputs(golden)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.precision == "bf16" \
        else contextlib.nullcontext
    step = 0

    def handle(request: dict) -> dict:
        nonlocal step
        batch = batches[BATCHES[step % len(BATCHES)]]
        with autocast():
            losses = model(**batch)
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        return {"step": step, "rss_mib": common.rss_mib(), "peak_rss_mib": common.peak_rss_mib()}

    common.serve(handle, {"rss_after_build_mib": common.rss_mib()})


def checkpoints(steps: int) -> list[int]:
    """The steps whose RSS the table shows."""
    marks = [1, 3, 10, 30, 60, 90, 120, 180, 240, 300, 450, 600]
    return sorted({m for m in marks if m < steps} | {steps})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("golden", nargs="?", type=Path, help="golden fixture folder (cclm-tiny-ref)")
    parser.add_argument("--precision", action="append", choices=("fp32", "bf16"),
                        help="repeatable; default both")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30, help="steps after which the RSS should stay flat")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the figures here (also to $OUT/training_memory.json when $OUT is set)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    common.golden_dir(args.golden)
    precisions = args.precision or ["fp32", "bf16"]
    script = Path(__file__).resolve()
    workers = {p: common.Worker(script, [str(args.golden), "--precision", p, "--threads", str(args.threads)])
               for p in precisions}
    trace = {p: [] for p in precisions}
    try:
        for _ in range(args.steps):
            for p, worker in workers.items():
                trace[p].append(worker.ask({}))
    finally:
        for worker in workers.values():
            worker.close()
    marks = checkpoints(args.steps)
    rows = []
    for p in precisions:
        rss = [t["rss_mib"] for t in trace[p]]
        after_warmup = rss[min(args.warmup, len(rss)) - 1]
        row = {"precision": p, "build_mib": workers[p].ready["rss_after_build_mib"],
               **{f"rss@{m}": rss[m - 1] for m in marks},
               "growth_after_warmup_mib": max(rss[args.warmup - 1:]) - after_warmup if len(rss) >= args.warmup
               else None,
               "peak_mib": trace[p][-1]["peak_rss_mib"], "reference_peak_mib": REFERENCE_PEAK_MIB[p]}
        row["peak_vs_reference"] = row["peak_mib"] / row["reference_peak_mib"]
        rows.append(row)
    common.print_table(rows, [("precision", "precision"), ("build_mib", "after build"),
                              *[(f"rss@{m}", f"step {m}") for m in marks],
                              ("growth_after_warmup_mib", f"growth after step {args.warmup}"),
                              ("peak_mib", "peak"), ("reference_peak_mib", "ref peak"),
                              ("peak_vs_reference", "peak / ref")])
    print("(MiB; RSS at the end of each step)")
    result = {"bench": "training_memory", "steps": args.steps, "warmup": args.warmup, "rows": rows,
              "rss_by_step": {p: [round(t["rss_mib"], 1) for t in trace[p]] for p in precisions},
              "machine": common.machine_facts(), "command": " ".join(sys.argv)}
    common.write_json(result, args.json)
    return 0


if __name__ == "__main__":
    common.use_passive_openmp()
    sys.exit(main())
