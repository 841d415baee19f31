#!/usr/bin/env python3
"""OpenMP's wait policy for run.py's workers: a tiny task run with idle OpenMP threads spinning for libgomp's default
300,000 rounds before they sleep (what torchrun's workers get unless told otherwise), spinning 10,000 rounds, or
sleeping at once (OMP_WAIT_POLICY=PASSIVE), on an idle machine and beside another job, the variants alternating.

    python3 bench/omp_wait_policy.py [--rounds 2] [--loads none busy]

The workloads are run.py commands on the synthetic world: ``evaluate`` (itr_multi30k --evaluate of a checkpoint the
script trains once) and ``train`` (itr_multi30k, one epoch: 35 steps and its evaluation). The ``busy`` load is a
second process multiplying matrices on every core, as another run or a DataLoader worker would. Printed: each run's
wall time, and each variant's median over the default's per workload and load (below 1: faster than the default).
(torch's CPU wheels use GNU libgomp; GOMP_SPINCOUNT is its spin length.)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine_facts, summarize, write_json  # noqa: E402

CONFIG = "configs/tiny/itr_multi30k.yaml"
VARIANTS = {"default spin": {"GOMP_SPINCOUNT": "300000"},  # libgomp's documented default without a policy
            "spin 10k": {"GOMP_SPINCOUNT": "10000"},
            "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}
# the busy job ends with this script (it checks its parent), also when the script is killed
BUSY = ("import os, torch; torch.set_num_threads(os.cpu_count()); a = torch.randn(384, 384); parent = os.getppid()\n"
        "while os.getppid() == parent: a = (a @ a).tanh_()")


def run_py(args: list[str], variant: str, out: Path) -> float:
    """Wall seconds of one run.py command with the environment of ``variant`` (it must succeed)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(VARIANTS[variant])
    cmd = [sys.executable, "run.py", "--task", "itr_multi30k", "--dist", "cpu", "--config", CONFIG,
           "--output_dir", str(out), *args]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def start_load(kind: str) -> subprocess.Popen | None:
    """The background job for load ``kind`` ('none': nothing)."""
    if kind == "none":
        return None
    return subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--loads", nargs="+", default=["none", "busy"], choices=["none", "busy"])
    parser.add_argument("--workloads", nargs="+", default=["evaluate", "train"], choices=["evaluate", "train"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="omp-bench-") as tmp:
        tmp = Path(tmp)
        run_py(["--epoch", "1"], "default spin", tmp / "trained")  # the checkpoint the evaluate workload reads
        workloads = {"evaluate": ["--evaluate", "--checkpoint", str(tmp / "trained" / "checkpoint_best.pth")],
                     "train": ["--epoch", "1"]}
        times: dict[tuple[str, str, str], list[float]] = {}
        n = 0
        for load in args.loads:
            background = start_load(load)
            try:
                time.sleep(2 if background else 0)
                for _ in range(args.rounds):
                    for workload in args.workloads:
                        for variant in VARIANTS:
                            n += 1
                            seconds = run_py(workloads[workload], variant, tmp / f"run{n}")
                            times.setdefault((workload, load, variant), []).append(seconds)
                            print(f"{workload:9s} load {load:5s} {variant:13s} {seconds:7.1f} s", flush=True)
            finally:
                if background:
                    background.kill()
                    background.wait()

    names = list(VARIANTS)
    print(f"\n{'workload':9s} {'load':5s} " + " ".join(f"{name + ' s':>15s}" for name in names) + " "
          + " ".join(f"{name + ' x':>15s}" for name in names[1:]))
    rows = []
    for workload in args.workloads:
        for load in args.loads:
            seconds = {name: summarize(times[(workload, load, name)]) for name in names}
            base = seconds[names[0]]["median"]
            ratios = {name: seconds[name]["median"] / base for name in names[1:]}
            rows.append({"workload": workload, "load": load, "seconds": seconds, "x_vs_default": ratios})
            print(f"{workload:9s} {load:5s} " + " ".join(f"{seconds[n]['median']:15.1f}" for n in names) + " "
                  + " ".join(f"{ratios[n]:15.2f}" for n in names[1:]))
    write_json({"bench": "omp_wait_policy", "rows": rows, "machine": machine_facts()}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
