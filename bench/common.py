"""What the bench scripts share: the golden folder argument, timing statistics, machine facts, A/B workers, output.

Timings on a shared machine are noisy: every script reports medians, and comparisons (before/after, one query at a
time vs batched) are measured in the same run, alternating the variants round by round, so both see the same load.
A variant that needs another checkout of the code (the "before" figures) runs in a worker subprocess whose
``sys.path`` starts at that checkout; the parent sends it one round at a time (:class:`Worker`).
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]


def add_repo_to_path(root: str | os.PathLike | None = None) -> Path:
    """Put ``root`` (default: this checkout) first on ``sys.path`` so ``models``/``utils`` import from it."""
    path = Path(root).resolve() if root else REPO
    if not (path / "models").is_dir():
        raise FileNotFoundError(f"{path} is not a checkout of this project (no models/ folder)")
    sys.path.insert(0, str(path))
    return path


def use_passive_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE`` unless set): on a shared machine
    with more runnable threads than cores, the default spinning made a 2-thread op wait for a scheduler slice
    whenever its partner thread was descheduled (~14 ms per small op, measured), so figures measured the load rather
    than the work. Call before torch is imported (a script's ``__main__``; its worker processes inherit it)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def golden_dir(path: str | os.PathLike | None) -> Path:
    """The golden fixture folder given on the command line, or a clear error when it is absent."""
    if path is None:
        raise SystemExit("this benchmark needs the golden fixture folder (cclm-tiny-ref) as its argument; it exists "
                         "only in the development checkout (../shared/golden/cclm-tiny-ref), not in a user's clone")
    folder = Path(path)
    needed = ("tiny_state.pt", "tiny_inputs.pt", "tiny_losses.json")
    missing = [name for name in needed if not (folder / name).is_file()]
    if not folder.is_dir() or missing:
        raise SystemExit(f"golden folder {folder} is absent or incomplete (missing {missing or 'the folder'}); "
                         "pass the path of cclm-tiny-ref (../shared/golden/cclm-tiny-ref in the development checkout)")
    return folder


def synthetic_world(params: dict | None = None) -> Path:
    """The synthetic world's folder (generated once under cache/ by this checkout's ``tasks.environment``), found in a
    subprocess so that a run with another checkout's code (``--root``) need not have that module."""
    params = params or {"images": 200, "seed": 0}
    code = ("import json, sys; from tasks.environment import resolve_data_root; "
            f"print(resolve_data_root({{'synthetic': json.loads(sys.argv[1])}}))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(params)], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode != 0:
        raise RuntimeError(f"could not make the synthetic world {params}: {out.stderr.strip()[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def prepared_task_config(config_path: str | os.PathLike) -> tuple[dict, Path]:
    """(config, data root) of a task config with its synthetic world made and its weightless text encoder folder
    written (``text_config``), done in a subprocess of this checkout like :func:`synthetic_world`."""
    code = ("import json, sys; from utils.config import load_config; "
            "from tasks.environment import prepare_text_encoder, resolve_data_root; "
            "c = load_config(sys.argv[1]); root = resolve_data_root(c); "
            "c['text_encoder'] = prepare_text_encoder(c, root); print(json.dumps([c, str(root)], default=str))")
    out = subprocess.run([sys.executable, "-c", code, str(config_path)], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode != 0:
        raise RuntimeError(f"could not prepare {config_path}: {out.stderr.strip()[-2000:]}")
    config, root = json.loads(out.stdout.strip().splitlines()[-1])
    return config, Path(root)


def summarize(seconds: list[float]) -> dict:
    """Median, min, max and all values (seconds) of repeated timings."""
    if not seconds:
        return {"median": None, "min": None, "max": None, "n": 0, "all": []}
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds), "n": len(seconds),
            "all": [round(s, 5) for s in seconds]}


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mib() -> float:
    """Resident memory of this process now (MiB; Linux /proc, else the peak)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return peak_rss_mib()


def machine_facts() -> dict:
    """What the figures depend on: CPU, thread count, load (other people's jobs), versions."""
    import torch

    facts = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
             "torch_threads": torch.get_num_threads(), "load_avg_1_5_15": list(os.getloadavg()),
             "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
             "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()}
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        facts["cpu_model"] = model
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def write_json(result: dict, path: str | os.PathLike | None, quiet: bool = False) -> None:
    """Write ``result`` to ``path`` (a file, or a folder: then ``<name>.json`` inside it); also to $OUT if set.
    Each file is replaced whole (temporary file + rename), so a reader never sees half of one."""
    targets = []
    if path:
        targets.append(Path(path))
    if os.environ.get("OUT"):
        targets.append(Path(os.environ["OUT"]) / f"{result.get('bench', 'bench')}.json")
    for target in targets:
        if target.is_dir():
            target = target / f"{result.get('bench', 'bench')}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        # (not utils.results' writer: sys.path may start at another checkout whose utils differ)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str))
        os.replace(tmp, target)
        if not quiet:
            print(f"wrote {target}")


def print_table(rows: list[dict], columns: list[tuple[str, str]]) -> None:
    """A plain-text table: ``columns`` are (key, header) pairs; floats get 4 significant digits."""
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "-" if value is None else str(value)

    table = [[header for _, header in columns]] + [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    for n, r in enumerate(table):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


class Worker:
    """A subprocess running ``script --worker ...`` that answers one JSON line per JSON request line.

    Used to time another checkout of the code (``--root``) in the same run as this one, round by round.
    """

    def __init__(self, script: Path, args: list[str], env: dict | None = None):
        cmd = [sys.executable, str(script), "--worker", *args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                     env={**os.environ, **(env or {})})
        self.cmd = cmd
        self.ready = self._read()

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {' '.join(self.cmd)} exited with code {self.proc.wait()}")
            if line.startswith("@@"):
                return json.loads(line[2:])

    def ask(self, request: dict) -> dict:
        """Send one request and wait for its answer."""
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def serve(handle: Callable[[dict], dict], ready: dict) -> None:
    """Worker side of :class:`Worker`: answer requests read from stdin until it closes (answers start with @@)."""
    print("@@" + json.dumps(ready), flush=True)
    for line in sys.stdin:
        if line.strip():
            print("@@" + json.dumps(handle(json.loads(line))), flush=True)
