#!/usr/bin/env python3
"""Launch a CCLM task: ``python3 run.py --task NAME --dist 1 [task flags]``.

The task name selects a script and its default config from ``TASKS``. The script runs under torchrun
(``python -m utils.launch``: torch.distributed.run's launcher, started as an argument list, never through a shell,
without the launcher's traceback when a worker fails) and ``run.py`` exits with the first failed worker's exit code.
``--dry-run`` prints the exact command instead of running it.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Task:
    script: str                       # task script, relative to the repository root
    config: str                       # default config
    fewshot_config: str | None = None  # default config with --fewshot


TASKS: dict[str, Task] = {
    "pretrain_cclm_3m": Task("Pretrain.py", "configs/Pretrain_3m.yaml"),
    "pretrain_cclm_4m": Task("Pretrain.py", "configs/Pretrain_4m.yaml"),
    "itr_multi30k": Task("Retrieval.py", "configs/retrieval/multi30k_all.yaml", "configs/retrieval/multi30k_fewshot.yaml"),
    "itr_coco": Task("Retrieval.py", "configs/retrieval/coco_all.yaml", "configs/retrieval/coco_fewshot.yaml"),
    "xvnli": Task("XVNLI.py", "configs/xvnli/xvnli.yaml", "configs/xvnli/xvnli_fewshot.yaml"),
    "gqa": Task("GQA.py", "configs/gqa/gqa.yaml", "configs/gqa/gqa_fewshot.yaml"),
    "nlvr": Task("NLVR.py", "configs/nlvr/nlvr.yaml", "configs/nlvr/nlvr_fewshot.yaml"),
    "nlvr_domain": Task("NLVR_pretrain.py", "configs/nlvr/nlvr_domain.yaml"),
    "xflickrco": Task("xFlickrCO.py", "configs/xflickrco/xflickrco.yaml", "configs/xflickrco/xflickrco_fewshot.yaml"),
    "wit": Task("WIT.py", "configs/wit/wit.yaml"),
    "demo": Task("Demo.py", "configs/tiny/demo.yaml"),
}

# Flags forwarded to the task script: (name, takes a value).
FORWARDED = [("--config", True), ("--output_dir", True), ("--bs", True), ("--seed", True), ("--epoch", True),
             ("--checkpoint", True), ("--lr", True), ("--fewshot", True), ("--resume", True), ("--output_hdfs", True)]
FORWARDED_SWITCHES = ["--evaluate", "--gmt"]
DEFAULT_GPUS_PER_NODE = 8


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=sorted(TASKS), help="which task to run")
    p.add_argument("--dist", default="cpu",
                   help="1 (all GPUs of this node) | all (multi-node) | gpuN | f4 | l4 | cpu | cpu:N (default cpu)")
    p.add_argument("--nproc", type=int, default=None, help="processes per node (default: GPUs here, or 8)")
    p.add_argument("--nnodes", default=None, help="--dist all: number of nodes (or torchrun's PET_NNODES)")
    p.add_argument("--node_rank", default=None, help="--dist all: this node's rank (or PET_NODE_RANK)")
    p.add_argument("--master_addr", default=None, help="--dist all: rank-0 node address (or PET_MASTER_ADDR)")
    p.add_argument("--master_port", default=None, help="--dist all: rendezvous port (or PET_MASTER_PORT)")
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="print the launch command and exit")
    for flag, _ in FORWARDED:
        p.add_argument(flag, default=None)
    for flag in FORWARDED_SWITCHES:
        p.add_argument(flag, action="store_true")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, a.b=c")
    return p


def _local_gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def launcher_args(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """torchrun arguments and extra environment variables for a ``--dist`` value."""
    dist = str(args.dist)
    env: dict[str, str] = {}
    if dist == "cpu" or dist.startswith("cpu:"):
        count = "1" if dist == "cpu" else dist.split(":", 1)[1]
        if not count.isdigit():
            raise SystemExit(f"--dist {dist}: expected cpu:N with N a number of processes")
        n = int(count)
        if n < 1:
            raise SystemExit(f"--dist {dist}: the number of processes must be at least 1")
        env["CCLM_DEVICE"] = "cpu"
        return ["--standalone", f"--nproc-per-node={args.nproc or n}"], env
    if dist == "1":
        n = args.nproc or _local_gpu_count() or DEFAULT_GPUS_PER_NODE
        return ["--standalone", f"--nproc-per-node={n}"], env
    if dist.startswith("gpu") and dist[3:].isdigit():
        env["CUDA_VISIBLE_DEVICES"] = dist[3:]
        return ["--standalone", "--nproc-per-node=1"], env
    if dist in ("f4", "l4"):
        env["CUDA_VISIBLE_DEVICES"] = "0,1,2,3" if dist == "f4" else "4,5,6,7"
        return ["--standalone", f"--nproc-per-node={args.nproc or 4}"], env
    if dist == "all":
        out = [f"--nproc-per-node={args.nproc or DEFAULT_GPUS_PER_NODE}"]
        for flag, value in (("--nnodes", args.nnodes), ("--node-rank", args.node_rank),
                            ("--master-addr", args.master_addr), ("--master-port", args.master_port)):
            if value is not None:
                out.append(f"{flag}={value}")
        return out, env
    raise SystemExit(f"--dist {dist!r} is not one of: 1, all, gpuN, f4, l4, cpu, cpu:N")


PATH_FLAGS = ("config", "output_dir", "checkpoint", "resume")


def absolutize_paths(args: argparse.Namespace) -> None:
    """Make user-given paths absolute: the script runs with the repository root as its working directory."""
    for name in PATH_FLAGS:
        value = getattr(args, name)
        if value is not None and not (name == "resume" and value == "latest") and "://" not in value:
            setattr(args, name, str(Path(value).expanduser().resolve()))


def script_args(args: argparse.Namespace, task: Task) -> list[str]:
    """The task script's own flags: the forwarded ones, with the task's default config filled in."""
    out: list[str] = []
    config = args.config or (task.fewshot_config if args.fewshot and task.fewshot_config else task.config)
    out += ["--config", config]
    for flag, _ in FORWARDED:
        if flag == "--config":
            continue
        value = getattr(args, flag.lstrip("-"))
        if value is not None:
            out += [flag, str(value)]
    for flag in FORWARDED_SWITCHES:
        if getattr(args, flag.lstrip("-")):
            out.append(flag)
    if args.opts:
        out += ["--opts", *args.opts]
    return out


def build_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The full torchrun command (argument list) and the environment variables it adds."""
    task = TASKS[args.task]
    launch, env = launcher_args(args)
    cmd = [sys.executable, "-m", "utils.launch", *launch, task.script, *script_args(args, task)]
    return cmd, env


def format_command(cmd: list[str], env: dict[str, str]) -> str:
    """One shell-quoted line (for display only; it is never run through a shell)."""
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    return (prefix + " " if prefix else "") + shlex.join(cmd)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    absolutize_paths(args)
    task = TASKS[args.task]
    cmd, env = build_command(args)
    missing = [p for p in (task.script,) if not (ROOT / p).is_file()]
    if args.dry_run:
        print(format_command(cmd, env))
        if missing:
            print(f"note: {missing[0]} is not implemented yet in this version", file=sys.stderr)
        return 0
    if missing:
        print(f"task {args.task!r}: its script {missing[0]} is not implemented yet in this version of the project",
              file=sys.stderr)
        return 2
    config = cmd[cmd.index("--config") + 1]
    if not (ROOT / config).is_file():
        print(f"task {args.task!r}: config {config} does not exist", file=sys.stderr)
        return 2
    child_env = {**os.environ, **env}
    child_env.setdefault("PYTHONPATH", str(ROOT))
    # torchrun exits non-zero when any worker fails; pass its code on.
    return subprocess.run(cmd, cwd=ROOT, env=child_env).returncode


if __name__ == "__main__":
    sys.exit(main())
