#!/usr/bin/env python3
"""Launch a CCLM task: ``python3 run.py --task NAME [--dist DIST] [task flags]``.

The task name selects a script and its default config from the task registry (``tasks/registry.py``). The script
runs under torchrun (``python -m utils.launch``: torch.distributed.run's launcher, started as an argument list, never
through a shell, without the launcher's traceback when a worker fails) and ``run.py`` exits with the launch's exit
code (``utils.errors.EXIT_CODES``: 2 for a user error, 75 for a run stopped on a signal after its checkpoint).
``run.py`` owns the launch: every signal it receives (of ``utils.launch.FORWARDED_SIGNALS``: SIGTERM, SIGINT, ...)
is passed to the launcher, which passes it to the workers, and the launcher dies with ``run.py`` (the workers with
the launcher). ``--dry-run`` prints the exact command instead of running it; ``run.py --task NAME --help`` shows
that task's data, configs and flags.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tasks.cli import HANDOFF_ENV, PATH_FLAGS, add_task_arguments, forwarded_argv
from tasks.registry import TASKS, TaskInfo
from utils.errors import USER_ERROR_EXIT_CODE
from utils.launch import FORWARDED_SIGNALS, OWNER_ENV

ROOT = Path(__file__).resolve().parent
DEFAULT_GPUS_PER_NODE = 8
# Idle OpenMP threads of every worker spin 10,000 rounds before they sleep, unless the user sets OMP_WAIT_POLICY or
# GOMP_SPINCOUNT (torch's CPU wheels use GNU libgomp). libgomp's default, 300,000 rounds, stalls every parallel op
# whenever another process (a DataLoader worker, a second run) holds a core: beside a busy process a tiny training
# run took 102.7 s instead of 17.1 s; 10,000 rounds: 34.0 s, and no slower on an idle machine. Sleeping at once
# (OMP_WAIT_POLICY=PASSIVE: 19.8 s beside the busy process) cost ~20% on an idle one (bench/RESULTS.md section 11).
OPENMP_WAIT = {"GOMP_SPINCOUNT": "10000"}
DIST_FORMS = "1 (all GPUs of this node) | all (multi-node) | gpuN | f4 | l4 | cpu | cpu:N"


class LaunchError(Exception):
    """A launch the user must correct (a bad --dist value, a missing script or config): one line, exit code 2."""


def task_help(info: TaskInfo) -> str:
    """What ``--task NAME --help`` says about the task: summary, data, configs and the script's own description."""
    lines = [f"task {info.name}: {info.summary}", f"  script:  {info.script}", f"  config:  {info.config}"]
    if info.fewshot_config:
        lines.append(f"  few-shot config (with --fewshot): {info.fewshot_config}")
    lines.append(f"  data:    {info.data} (relative to data_root, CCLM_DATA or the working directory)")
    if info.refuses:
        lines.append(f"  refuses: {', '.join('--' + flag for flag in info.refuses)}")
    script = ROOT / info.script
    doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) if script.is_file() else ""
    return "\n".join(lines) + ("\n\n" + doc if doc else "")


def build_parser(info: TaskInfo | None = None) -> argparse.ArgumentParser:
    """The launcher's flags and every task flag (declared once, in tasks/cli.py); with ``info``, that task's help."""
    description = __doc__ if info is None else task_help(info)
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=list(TASKS), help="which task to run")
    launch = p.add_argument_group("launcher")
    launch.add_argument("--dist", default=None,
                        help=f"{DIST_FORMS} (default: every GPU of this node when CUDA is available, else cpu)")
    launch.add_argument("--nproc", type=int, default=None, help="processes per node (default: GPUs here, or 8)")
    launch.add_argument("--nnodes", default=None, help="--dist all: number of nodes (or torchrun's PET_NNODES)")
    launch.add_argument("--node_rank", default=None, help="--dist all: this node's rank (or PET_NODE_RANK)")
    launch.add_argument("--master_addr", default=None, help="--dist all: rank-0 node address (or PET_MASTER_ADDR)")
    launch.add_argument("--master_port", default=None, help="--dist all: rendezvous port (or PET_MASTER_PORT)")
    launch.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="print the launch command and exit")
    add_task_arguments(p.add_argument_group("task flags (passed to the task script)"))
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; ``--help`` after a known ``--task`` shows that task's help."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task", choices=list(TASKS))
    known, _ = pre.parse_known_args(argv)
    wants_help = known.task and ("-h" in argv or "--help" in argv)
    return build_parser(TASKS[known.task] if wants_help else None).parse_args(argv)


def _local_gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def default_dist() -> str:
    """Every local GPU when CUDA has any, else one CPU process."""
    return "1" if _local_gpu_count() > 0 else "cpu"


def launcher_args(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """torchrun arguments and extra environment variables for a ``--dist`` value."""
    dist = str(args.dist or default_dist())
    env: dict[str, str] = {}
    if dist == "cpu" or dist.startswith("cpu:"):
        count = "1" if dist == "cpu" else dist.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise LaunchError(f"--dist {dist}: expected cpu:N with N >= 1 processes (e.g. --dist cpu:2)")
        env["CCLM_DEVICE"] = "cpu"
        return ["--standalone", f"--nproc-per-node={args.nproc or int(count)}"], env
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
    raise LaunchError(f"--dist {dist!r} is not one of: {DIST_FORMS}")


def absolutize_paths(args: argparse.Namespace) -> None:
    """Make user-given paths absolute: the script runs with the repository root as its working directory."""
    for name in PATH_FLAGS:
        value = getattr(args, name)
        if value is not None and not (name == "resume" and value == "latest") and "://" not in value:
            setattr(args, name, str(Path(value).expanduser().resolve()))


def script_args(args: argparse.Namespace, info: TaskInfo) -> list[str]:
    """The task script's own flags: ``--task``, the config (the task's default unless given), the forwarded flags."""
    config = args.config or info.config_for(bool(args.fewshot))
    rest = forwarded_argv(args)
    if "--config" in rest:
        index = rest.index("--config")
        del rest[index:index + 2]
    return ["--task", info.name, "--config", config, *rest]


def threads_per_process(launch: list[str]) -> str:
    """OMP_NUM_THREADS for each process: the machine's cores shared out (torchrun would set 1 and say so)."""
    nproc = next((int(a.split("=", 1)[1]) for a in launch if a.startswith("--nproc-per-node=")), 1)
    return str(max(1, (os.cpu_count() or 1) // max(1, nproc)))


def build_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The full torchrun command (argument list) and the environment variables it adds."""
    info = TASKS[args.task]
    launch, env = launcher_args(args)
    if "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = threads_per_process(launch)
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        env.update(OPENMP_WAIT)
    return [sys.executable, "-m", "utils.launch", *launch, info.script, *script_args(args, info)], env


def format_command(cmd: list[str], env: dict[str, str]) -> str:
    """One shell-quoted line (for display only; it is never run through a shell)."""
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    return (prefix + " " if prefix else "") + shlex.join(cmd)


@contextmanager
def forwarding_signals(process: subprocess.Popen):
    """Pass every signal of FORWARDED_SIGNALS that run.py receives to ``process`` while it runs."""
    def forward(signum, frame):
        if process.poll() is None:
            process.send_signal(signum)

    previous = {}
    for name in FORWARDED_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, forward)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def launch(cmd: list[str], env: dict[str, str]) -> tuple[int, dict | None]:
    """Run one launch; (exit code, the follow-up task the run asked for, if any).

    The launcher runs in its own session, so a signal to run.py's process group reaches it once, through run.py."""
    with tempfile.TemporaryDirectory(prefix="cclm-handoff-") as tmp:
        handoff = Path(tmp) / "next.json"
        child_env = {**os.environ, **env, HANDOFF_ENV: str(handoff), OWNER_ENV: str(os.getpid())}
        child_env.setdefault("PYTHONPATH", str(ROOT))
        process = subprocess.Popen(cmd, cwd=ROOT, env=child_env, start_new_session=True)
        with forwarding_signals(process):
            code = process.wait()
        code = 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell reports it
        followup = json.loads(handoff.read_text(encoding="utf-8")) if code == 0 and handoff.is_file() else None
    return code, followup


def check_launch(args: argparse.Namespace, cmd: list[str]) -> None:
    """The task's script and config exist."""
    info = TASKS[args.task]
    if not (ROOT / info.script).is_file():
        raise LaunchError(f"task {args.task!r}: its script {info.script} does not exist in this checkout")
    config = cmd[cmd.index("--config") + 1]
    if not (ROOT / config).is_file():
        raise LaunchError(f"task {args.task!r}: config {config} does not exist")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    absolutize_paths(args)
    try:
        cmd, env = build_command(args)
        if not args.dry_run:
            check_launch(args, cmd)
    except LaunchError as e:
        print(f"run.py: {e}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    if args.dry_run:
        print(format_command(cmd, env))
        return 0
    info = TASKS[args.task]
    launch_part = cmd[:cmd.index(info.script)]
    while True:
        code, followup = launch(cmd, env)
        if code != 0 or followup is None:
            return code  # torchrun exits non-zero when any worker fails; its code is passed on
        # the run asked for the task that continues it (nlvr_domain -> nlvr): same launcher, the run's flags
        info = TASKS[followup["task"]]
        print(f"run.py: {args.task} done; starting task {info.name}", file=sys.stderr, flush=True)
        cmd = [*launch_part, info.script, "--task", info.name, *followup["argv"]]


if __name__ == "__main__":
    sys.exit(main())
