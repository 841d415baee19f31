"""The reproduce task: the paper's zero-shot evaluations from a checkpoint, each benchmark a run of its own task
through ``run.py``, and our numbers beside the paper's.

1. plan: the benchmarks of the config (``benchmarks``, ``only``) and the checkpoint each takes. ``--checkpoint FILE``
   is the pre-trained checkpoint: every benchmark fine-tunes on English from it, selects its epoch on English
   validation data and tests every language (the zero-shot protocol, docs/protocols.md). ``--checkpoint DIR`` takes
   ``DIR/<pretrained_name>`` likewise, except that a benchmark with a fine-tuned checkpoint
   ``DIR/<benchmark>/checkpoint_best.pth`` (what this task writes, so a finished output folder serves) is only
   evaluated with it (``--evaluate``). ``--evaluate`` requires the fine-tuned checkpoint of every benchmark.
2. check: every file and folder each benchmark reads (tasks/inputs.py) and the checkpoint; whatever is missing is
   listed with the config key that names it, its path under the data root and where it comes from (``sources``), in
   the log and in ``inputs.md``. ``--dry-run-data`` stops here (exit 0); a run stops here when anything is missing.
3. run: ``run.py --task <task>`` per benchmark, with as many processes of the same device kind as this run has,
   into ``<output_dir>/<benchmark>``; a failed benchmark is reported and the others still run. A benchmark already
   finished with the same checkpoint and mode is not rerun (``reuse_finished``).
4. compare: each benchmark's ``results.json`` beside the paper's numbers (``paper``: configs/paper/*.yaml, with their
   source), each row within / outside ``tolerance``; ``results.json`` and ``results.md``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from tasks.environment import resolve_data_root, resolve_text_encoder
from tasks.inputs import Input, InputStatus, check_inputs, config_inputs
from tasks.registry import TASKS
from utils.config import ConfigError, load_config, read_yaml
from utils.results import write_text_atomically

logger = logging.getLogger("reproduce")

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK_KEYS = {"task", "config", "metrics", "flags", "opts", "images"}
FINETUNED = "checkpoint_best.pth"       # a benchmark's fine-tuned checkpoint, in <checkpoint DIR>/<benchmark>/
RUN_RECORD = "reproduce.json"           # what a benchmark's run was (checkpoint, mode, exit code), in its folder
# Variables of the launcher that started this process: a benchmark's own launcher must not inherit them.
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
                "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS", "CCLM_DEVICE",
                "CCLM_HANDOFF")
AVG = "avg"


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: the task that runs it, its config, the metrics compared, its extra flags and overrides, and
    the image folders its annotations point into (where the config's image root is their common parent)."""

    name: str
    task: str
    config: str
    metrics: tuple[str, ...]
    flags: tuple[str, ...] = ()
    opts: tuple[str, ...] = ()
    images: tuple[str, ...] = ()


@dataclass
class Step:
    """A benchmark's part of the run: how it runs (fine-tune or evaluate), from which checkpoint, on what inputs."""

    benchmark: Benchmark
    mode: str                                   # "fine-tune" | "evaluate"
    checkpoint: Path | None
    root: Path
    inputs: list[InputStatus] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # why an input is missing, where a check says more
    exit_code: int | None = None
    seconds: float | None = None
    reused: bool = False

    @property
    def ready(self) -> bool:
        return all(status.found for status in self.inputs)


# ------------------------------------------------------------------------------------------------------ plan

def read_benchmarks(config: Mapping) -> list[Benchmark]:
    """The benchmarks to run, in config order (``only`` picks some); every entry checked."""
    entries = config.get("benchmarks") or {}
    if not entries:
        raise ConfigError("config key 'benchmarks' names no benchmark")
    only = config.get("only")
    unknown = sorted(set(only or []) - set(entries))
    if unknown:
        raise ConfigError(f"config key 'only' names unknown benchmark(s) {unknown}; benchmarks: {sorted(entries)}")
    benchmarks = []
    for name, entry in entries.items():
        if only is not None and name not in only:
            continue
        where = f"config key 'benchmarks.{name}'"
        if not isinstance(entry, Mapping) or not {"task", "config", "metrics"} <= set(entry):
            raise ConfigError(f"{where} needs task, config and metrics, got {entry!r}")
        extra = sorted(set(entry) - BENCHMARK_KEYS)
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {extra} (known: {sorted(BENCHMARK_KEYS)})")
        if entry["task"] not in TASKS:
            raise ConfigError(f"{where}: unknown task {entry['task']!r}; tasks: {', '.join(sorted(TASKS))}")
        if not (ROOT / str(entry["config"])).is_file():
            raise ConfigError(f"{where}: config {entry['config']} does not exist")
        missing_tolerance = [m for m in entry["metrics"] if m not in (config.get("tolerance") or {})]
        if missing_tolerance:
            raise ConfigError(f"{where}: no tolerance for metric(s) {missing_tolerance} (config key 'tolerance')")
        benchmarks.append(Benchmark(name, str(entry["task"]), str(entry["config"]), tuple(entry["metrics"]),
                                    tuple(str(f) for f in entry.get("flags") or ()),
                                    tuple(str(o) for o in entry.get("opts") or ()),
                                    tuple(str(p) for p in entry.get("images") or ())))
    return benchmarks


def benchmark_overrides(config: Mapping, benchmark: Benchmark) -> list[str]:
    """The config overrides of a benchmark's run: the data root and text encoder, the overrides for all, the
    benchmark's own."""
    shared = [f"{key}={config[key]}" for key in ("data_root", "text_encoder") if config.get(key)]
    return shared + [str(o) for o in config.get("opts") or []] + list(benchmark.opts)


def benchmark_config(config: Mapping, benchmark: Benchmark) -> dict:
    """The benchmark's resolved config (its task's schema checks it), as its run will see it."""
    info = TASKS[benchmark.task]
    return load_config(ROOT / benchmark.config, benchmark_overrides(config, benchmark), schema=ROOT / info.schema)


def choose_checkpoint(benchmark: Benchmark, checkpoint: str | None, config: Mapping,
                      evaluate_only: bool) -> tuple[str, Path | None]:
    """(mode, checkpoint path) of a benchmark: its fine-tuned checkpoint in the --checkpoint folder (evaluate), else
    the pre-trained one (fine-tune); None when there is none."""
    if not checkpoint:
        return ("evaluate" if evaluate_only else "fine-tune"), None
    path = Path(checkpoint)
    if path.is_dir():
        finetuned = path / benchmark.name / FINETUNED
        if finetuned.is_file():
            return "evaluate", finetuned
        if evaluate_only:
            return "evaluate", finetuned
        return "fine-tune", path / str(config["pretrained_name"])
    return ("evaluate" if evaluate_only else "fine-tune"), path


def checkpoint_input(step: Step, checkpoint: str | None) -> Input:
    if step.checkpoint is None:
        return Input("--checkpoint", "(not given)")
    what = "--checkpoint (fine-tuned)" if step.mode == "evaluate" else "--checkpoint (pre-trained)"
    return Input(what, str(step.checkpoint.resolve()))


def text_encoder_problem(name: str, root: Path, seen: dict) -> str | None:
    """Why the text encoder ``name`` cannot be had (None: a folder, or a hub id the hub or its cache provides); the
    hub is asked once per name."""
    if (str(root), name) not in seen:
        try:
            resolve_text_encoder(name, root)
            seen[str(root), name] = None
        except ConfigError as e:
            seen[str(root), name] = str(e)
    return seen[str(root), name]


def plan(config: Mapping, checkpoint: str | None, evaluate_only: bool) -> list[Step]:
    """Every benchmark's step with the status of each of its inputs (the checkpoint first)."""
    steps, seen = [], {}
    for benchmark in read_benchmarks(config):
        bconfig = benchmark_config(config, benchmark)
        root = resolve_data_root(bconfig)
        mode, path = choose_checkpoint(benchmark, checkpoint, config, evaluate_only)
        step = Step(benchmark, mode, path, root)
        inputs = [checkpoint_input(step, checkpoint)] + config_inputs(bconfig, root)
        inputs += [Input(f"benchmarks.{benchmark.name}.images", path, "folder") for path in benchmark.images]
        for status in check_inputs(inputs, root):
            if status.input.key == "text_encoder" and not status.found:
                problem = text_encoder_problem(status.input.path, root, seen)
                status = InputStatus(status.input, problem is None, () if problem is None else status.missing)
                step.problems += [problem] if problem else []
            step.inputs.append(status)
        steps.append(step)
    return steps


# ------------------------------------------------------------------------------------------------ the listing

def source_of(path: str, sources: Mapping[str, str]) -> str | None:
    """Where data at ``path`` (relative to the data root) comes from: the longest matching prefix of ``sources``."""
    matches = [prefix for prefix in sources if path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/")]
    return sources[max(matches, key=len)] if matches else None


def input_rows(steps: Sequence[Step], config: Mapping) -> list[dict]:
    """One row per distinct path: the benchmarks and keys that need it, found or missing, where it comes from; a
    missing input our code builds lists its missing sources instead."""
    rows: dict[tuple[str, str], dict] = {}
    sources = config.get("sources") or {}
    for step in steps:
        for status in step.inputs:
            items = [status.input] if status.found else list(status.missing)
            for item in items:
                checkpoint = item.key.startswith("--checkpoint")
                key = ("" if checkpoint else str(step.root), item.path)
                row = rows.setdefault(key, {"path": item.path, "kind": item.kind, "root": str(step.root),
                                            "found": status.found, "needed_by": [], "built_into": []})
                row["needed_by"].append(f"{step.benchmark.name}: {item.key}")
                if item is not status.input:
                    row["built_into"].append(status.input.path)
                if checkpoint:
                    row["from"] = config.get("checkpoint_source")
                else:
                    row["from"] = source_of(item.path, sources)
    for row in rows.values():
        row["needed_by"] = sorted(set(row["needed_by"]))
        row["built_into"] = sorted(set(row["built_into"]))
    return list(rows.values())


def format_missing(rows: Sequence[dict]) -> str:
    """The missing inputs grouped by where they come from, for the log."""
    missing = [r for r in rows if not r["found"]]
    groups: dict[str, list[dict]] = {}
    for row in missing:
        groups.setdefault(row["from"] or "(no source known: see the README's data section)", []).append(row)
    lines = []
    for origin, members in groups.items():
        lines.append(f"  from {origin}:")
        for row in members:
            built = f"; our code builds {', '.join(row['built_into'])} from it" if row["built_into"] else ""
            lines.append(f"    {row['path']}{'/' if row['kind'] == 'folder' else ''}   "
                         f"[{'; '.join(row['needed_by'])}{built}]")
    return "\n".join(lines)


def inputs_markdown(rows: Sequence[dict]) -> str:
    """inputs.md: every input, missing first, with the benchmarks that need it and where it comes from."""
    roots = sorted({r["root"] for r in rows})
    lines = ["# Inputs of the reproduce run", "", f"Paths are relative to the data root ({', '.join(roots)}), "
             "checkpoints are absolute.", "", "| status | path | needed by | from |", "|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r["found"], r["path"])):
        needed = "; ".join(row["needed_by"]) + (f" (built into {', '.join(row['built_into'])})"
                                                if row["built_into"] else "")
        lines.append(f"| {'found' if row['found'] else 'MISSING'} | `{row['path']}` | {needed} | "
                     f"{row['from'] or '-'} |")
    return "\n".join(lines) + "\n"


def report_inputs(steps: Sequence[Step], config: Mapping, output_dir: Path) -> list[dict]:
    """Log the missing inputs, write inputs.json / inputs.md; returns the rows."""
    rows = input_rows(steps, config)
    missing = [r for r in rows if not r["found"]]
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(output_dir / "inputs.json", json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    write_text_atomically(output_dir / "inputs.md", inputs_markdown(rows))
    if missing:
        logger.info("%d of %d inputs missing (paths relative to the data root %s):\n%s",
                    len(missing), len(rows), ", ".join(sorted({r["root"] for r in missing})), format_missing(rows))
        for problem in dict.fromkeys(p for step in steps for p in step.problems):
            logger.info("%s", problem)
    else:
        logger.info("all %d inputs found", len(rows))
    logger.info("the list of inputs is in %s", output_dir / "inputs.md")
    return rows


# -------------------------------------------------------------------------------------------------- the runs

def benchmark_dist() -> list[str]:
    """run.py's launcher flags for a benchmark: as many processes on the same device kind as this run has."""
    local, world = int(os.environ.get("LOCAL_WORLD_SIZE", 1)), int(os.environ.get("WORLD_SIZE", 1))
    if world != local:
        raise ConfigError("the reproduce task runs on one node (each benchmark then uses all its processes); "
                          f"this run has {world} processes on several nodes")
    if os.environ.get("CCLM_DEVICE") == "cpu":
        return ["--dist", f"cpu:{local}"]
    return ["--dist", "1", "--nproc", str(local)]


def benchmark_env() -> dict[str, str]:
    """This process's environment without the variables of the launcher that started it."""
    return {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV and not k.startswith("TORCHELASTIC_")}


def benchmark_command(step: Step, config: Mapping, args: argparse.Namespace, output_dir: Path,
                      dist: Sequence[str]) -> list[str]:
    """The run.py command of one benchmark (an argument list, never a shell string)."""
    b = step.benchmark
    cmd = [sys.executable, str(ROOT / "run.py"), "--task", b.task, *dist, "--config", str(ROOT / b.config),
           "--output_dir", str(output_dir / b.name), "--checkpoint", str(step.checkpoint), *b.flags]
    if step.mode == "evaluate":
        cmd.append("--evaluate")
    for flag in ("seed", "device"):
        if getattr(args, flag, None) is not None:
            cmd += [f"--{flag}", str(getattr(args, flag))]
    opts = benchmark_overrides(config, b)
    return cmd + (["--opts", *opts] if opts else [])


def run_record(step: Step) -> dict:
    return {"checkpoint": str(step.checkpoint.resolve()), "mode": step.mode, "task": step.benchmark.task,
            "config": step.benchmark.config}


def finished_before(step: Step, folder: Path) -> bool:
    """Whether ``folder`` holds a finished run of this step (same checkpoint, mode, task and config)."""
    record_path, results = folder / RUN_RECORD, folder / "results.json"
    if not (record_path.is_file() and results.is_file()):
        return False
    record = json.loads(record_path.read_text(encoding="utf-8"))
    return record.get("exit_code") == 0 and all(record.get(k) == v for k, v in run_record(step).items())


def run_benchmark(step: Step, config: Mapping, args: argparse.Namespace, output_dir: Path,
                  dist: Sequence[str]) -> None:
    """Run one benchmark through run.py (or reuse its finished run) and record how it went."""
    folder = output_dir / step.benchmark.name
    if config.get("reuse_finished") and finished_before(step, folder):
        step.exit_code, step.reused = 0, True
        logger.info("%s already finished in %s (reused; reuse_finished=false reruns it)",
                    step.benchmark.name, folder)
        return
    cmd = benchmark_command(step, config, args, output_dir, dist)
    logger.info("%s (%s, %s): %s", step.benchmark.name, step.benchmark.task, step.mode, " ".join(cmd))
    start = time.perf_counter()
    step.exit_code = subprocess.run(cmd, cwd=ROOT, env=benchmark_env()).returncode
    step.seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    record = {**run_record(step), "exit_code": step.exit_code, "seconds": step.seconds, "command": cmd}
    write_text_atomically(folder / RUN_RECORD, json.dumps(record, indent=2) + "\n")
    if step.exit_code:
        logger.error("%s failed with exit code %d (its log: %s); the other benchmarks still run",
                     step.benchmark.name, step.exit_code, folder / "log.txt")


# ------------------------------------------------------------------------------------------------ comparison

def read_paper(config: Mapping) -> dict:
    """The paper's numbers (configs/paper/*.yaml): ``source``, ``verification`` and per benchmark ``values``."""
    path = ROOT / str(config["paper"])
    paper = read_yaml(path)
    if not isinstance(paper.get("benchmarks"), Mapping) or "source" not in paper:
        raise ConfigError(f"{path}: a paper file needs 'source' and 'benchmarks'")
    return paper


def our_values(payload: Mapping | None, metric: str) -> dict[str, float]:
    """{language: value} of one metric in a benchmark's results.json, and ``avg`` over the non-English languages."""
    if not payload:
        return {}
    values = {lang: float(m[metric]) for lang, m in payload.get("languages", {}).items() if metric in m}
    others = [v for lang, v in values.items() if lang != "en"]
    if others:
        values[AVG] = sum(others) / len(others)
    return values


def compare_rows(step: Step, payload: Mapping | None, paper_entry: Mapping | None,
                 tolerance: Mapping[str, float]) -> list[dict]:
    """Rows (benchmark, metric, language, ours, paper, diff, status) of one benchmark."""
    rows = []
    for metric in step.benchmark.metrics:
        ours = our_values(payload, metric)
        paper = dict(((paper_entry or {}).get("values") or {}).get(metric) or {})
        languages = [lang for lang in ours if lang != AVG] + [lang for lang in paper if lang not in ours]
        languages = [lang for lang in languages if lang != AVG] + [AVG]
        for lang in languages:
            mine, theirs = ours.get(lang), paper.get(lang)
            diff = None if mine is None or theirs is None else mine - float(theirs)
            if payload is None:
                status = "not run"
            elif mine is None:
                status = "no result"
            elif theirs is None:
                status = "no paper number"
            else:
                status = "within" if abs(diff) <= float(tolerance[metric]) + 1e-9 else "outside"
            rows.append({"benchmark": step.benchmark.name, "metric": metric, "language": lang, "ours": mine,
                         "paper": None if theirs is None else float(theirs), "diff": diff,
                         "tolerance": float(tolerance[metric]), "status": status})
    return rows


def _number(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def comparison_markdown(paper: Mapping, rows: Sequence[dict], steps: Sequence[Step], tolerance: Mapping,
                        summary: Mapping) -> str:
    """results.md: the source, the tolerance, the side-by-side table and how each benchmark ran."""
    source = paper["source"]
    lines = ["# Our zero-shot results beside the paper's", "",
             f"Paper: {source.get('authors', '')}, \"{source.get('title', '')}\", {source.get('url', '')}, "
             f"{source.get('version', '')}; model: {source.get('model', '')}.", ""]
    if paper.get("verification"):
        lines += [f"Paper numbers: {paper['verification']}", ""]
    lines += ["Values are percentages. A row is *within* when |ours - paper| <= the metric's tolerance ("
              + ", ".join(f"{m} {t:g}" for m, t in tolerance.items()) + " points); avg = mean over the languages "
              "other than English.", "",
              "Summary: " + ", ".join(f"{n} {k}" for k, n in summary.items()), "",
              "| benchmark | metric | language | ours | paper | ours - paper | status |",
              "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['benchmark']} | {r['metric']} | {r['language']} | {_number(r['ours'])} | "
                     f"{_number(r['paper'])} | {_number(r['diff'], signed=True)} | {r['status']} |")
    lines += ["", "## Runs", "", "| benchmark | task | mode | checkpoint | exit code | minutes |",
              "|---|---|---|---|---:|---:|"]
    for s in steps:
        minutes = "reused" if s.reused else ("-" if s.seconds is None else f"{s.seconds / 60:.1f}")
        lines.append(f"| {s.benchmark.name} | {s.benchmark.task} | {s.mode} | `{s.checkpoint}` | "
                     f"{'-' if s.exit_code is None else s.exit_code} | {minutes} |")
    return "\n".join(lines) + "\n"


def write_comparison(steps: Sequence[Step], config: Mapping, output_dir: Path) -> dict:
    """Compare every benchmark's results with the paper; write results.json / results.md; return the payload."""
    paper, tolerance = read_paper(config), dict(config["tolerance"])
    rows = []
    for step in steps:
        results = output_dir / step.benchmark.name / "results.json"
        payload = (json.loads(results.read_text(encoding="utf-8"))
                   if step.exit_code == 0 and results.is_file() else None)
        rows += compare_rows(step, payload, paper["benchmarks"].get(step.benchmark.name), tolerance)
    summary = {status: sum(r["status"] == status for r in rows)
               for status in ("within", "outside", "no paper number", "no result", "not run")}
    result = {"task": "reproduce", "paper": paper["source"], "paper_verification": paper.get("verification"),
              "tolerance": tolerance, "summary": summary, "rows": rows,
              "benchmarks": {s.benchmark.name: {"task": s.benchmark.task, "config": s.benchmark.config,
                                                "mode": s.mode, "checkpoint": str(s.checkpoint),
                                                "exit_code": s.exit_code, "seconds": s.seconds, "reused": s.reused,
                                                "output_dir": str(output_dir / s.benchmark.name)} for s in steps}}
    write_text_atomically(output_dir / "results.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    write_text_atomically(output_dir / "results.md", comparison_markdown(paper, rows, steps, tolerance, summary))
    logger.info("%s; the table is in %s", ", ".join(f"{n} {k}" for k, n in summary.items()),
                output_dir / "results.md")
    return result


# ------------------------------------------------------------------------------------------------------ main

def reproduce(config: dict, args: argparse.Namespace) -> dict:
    """Plan, check the inputs, run every benchmark and compare (``--dry-run-data``: plan and check only)."""
    output_dir = Path(config["output_dir"])
    read_paper(config)  # a broken paper file is an error before hours of runs
    given = config.get("checkpoint")
    if given and not getattr(args, "dry_run_data", False) and not Path(given).exists():
        raise FileNotFoundError(f"--checkpoint {given}: no such file or folder")
    if config.get("evaluate") and given and Path(given).is_file():
        raise ConfigError(f"--evaluate evaluates each benchmark's fine-tuned checkpoint: --checkpoint must be a folder "
                          f"holding <benchmark>/{FINETUNED} (the layout this task writes), not the file {given}")
    steps = plan(config, config.get("checkpoint"), bool(config.get("evaluate")))
    rows = report_inputs(steps, config, output_dir)
    missing = [r for r in rows if not r["found"]]
    if getattr(args, "dry_run_data", False):
        return {"inputs": rows, "missing": len(missing)}
    if missing:
        problems = list(dict.fromkeys(p for step in steps for p in step.problems))
        raise ConfigError(f"{len(missing)} input(s) missing, listed above and in {output_dir / 'inputs.md'} "
                          "(python3 run.py --task reproduce --dry-run-data lists them without running anything)"
                          + "".join(f"; {p}" for p in problems))
    dist = benchmark_dist()
    for step in steps:
        run_benchmark(step, config, args, output_dir, dist)
    result = write_comparison(steps, config, output_dir)
    failed = [s.benchmark.name for s in steps if s.exit_code]
    if failed:
        raise BenchmarkFailed(f"benchmark(s) {', '.join(failed)} failed; the table in {output_dir / 'results.md'} "
                              "marks their rows 'not run'")
    return result


class BenchmarkFailed(RuntimeError):
    """One or more benchmark runs ended with a non-zero exit code (each reported in the log)."""
