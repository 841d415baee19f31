"""The task flags, declared once: every task script parses them, and ``run.py`` accepts and forwards the same table.

The original README's flags (``--config --output_dir --bs --seed --epoch --checkpoint --lr --fewshot --evaluate
--gmt``) plus ours (``--resume --device --output_hdfs --opts``). :func:`build_config` applies them to the task's config.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from tasks.registry import TaskInfo
from utils.config import ConfigError, load_config, set_by_path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Flag:
    """One task flag: its name, argparse keywords and help."""

    name: str
    help: str
    kwargs: Mapping[str, Any]
    tasks: tuple[str, ...] = ()   # the only tasks that take it (empty: every task)

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")

    @property
    def is_switch(self) -> bool:
        return self.kwargs.get("action") == "store_true"


FLAGS: tuple[Flag, ...] = (
    Flag("--config", "YAML config (default: the task's; the few-shot one with --fewshot)", {"default": None}),
    Flag("--output_dir", "where checkpoints, log.txt, metrics.jsonl, config.yaml and results.json/md go "
         "(default: the config's output_dir, else output/<task>)", {"default": None}),
    Flag("--bs", "global training batch, split over the processes (default: the config's)",
         {"type": int, "default": None}),
    Flag("--seed", "random seed (each process adds its rank)", {"type": int, "default": None}),
    Flag("--epoch", "number of epochs (schedular.epochs)", {"type": int, "default": None}),
    Flag("--checkpoint", "weights to start from: a released CCLM .th or one of ours", {"default": None}),
    Flag("--lr", "learning rate (optimizer.lr)", {"type": float, "default": None}),
    Flag("--fewshot", "few-shot spec, e.g. 'de,100', 'id' or 'ar,48' (selects the few-shot config)",
         {"default": None}),
    Flag("--evaluate", "evaluate --checkpoint without training", {"action": "store_true"}),
    Flag("--gmt", "translate-test: evaluate IGLUE's machine-translated test files (xvnli, xflickrco, wit)",
         {"action": "store_true"}),
    Flag("--resume", "continue a training run: a checkpoint file, its folder, or 'latest' (in --output_dir)",
         {"default": None}),
    Flag("--device", "auto (CUDA when available) | cuda | cpu (overrides the config's device)",
         {"default": None, "choices": ("auto", "cuda", "cpu")}),
    Flag("--output_hdfs", "mirror checkpoints, logs and results to this fsspec URL (s3://, gs://, hdfs://, ...)",
         {"default": None}),
    Flag("--opts", "config overrides KEY=VALUE (dotted keys, e.g. run.max_steps=10 optimizer.lr=1e-5)",
         {"nargs": "*", "default": [], "metavar": "KEY=VALUE"}),
    Flag("--dry-run-data", "reproduce: list every file the benchmarks read and the checkpoints, which are missing "
         "and where they come from (output_dir/inputs.md), and stop", {"action": "store_true"}, ("reproduce",)),
)
PATH_FLAGS = ("config", "output_dir", "checkpoint", "resume")
HANDOFF_ENV = "CCLM_HANDOFF"   # run.py sets it: the file where a run may name the task that continues it


def add_task_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Declare every task flag on ``parser``."""
    for flag in FLAGS:
        parser.add_argument(flag.name, help=flag.help, **flag.kwargs)


def forwarded_argv(args: argparse.Namespace) -> list[str]:
    """The task flags of ``args`` as a script's argument list (flags left at their default are not repeated)."""
    out: list[str] = []
    for flag in FLAGS:
        value = getattr(args, flag.dest)
        if flag.is_switch:
            out += [flag.name] if value else []
        elif flag.name == "--opts":
            out += ["--opts", *value] if value else []
        elif value is not None:
            out += [flag.name, str(value)]
    return out


def task_parser(info: TaskInfo, choices: Iterable[str], description: str) -> argparse.ArgumentParser:
    """A task script's parser: ``--task`` (the tasks the script serves) and the task flags."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=info.name, choices=list(choices),
                        help=f"which of the script's tasks to run (default {info.name})")
    add_task_arguments(parser)
    return parser


def resolve_config_path(info: TaskInfo, args: argparse.Namespace) -> str:
    """The config file of a run: ``--config``, else the task's default (few-shot one with ``--fewshot``)."""
    path = args.config or info.config_for(bool(args.fewshot))
    return path if Path(path).is_absolute() or Path(path).exists() else str(ROOT / path)


def build_config(info: TaskInfo, args: argparse.Namespace, world_size: int) -> dict:
    """Load the config (schema-checked) and apply the command-line flags to it."""
    for flag, why in info.refuses.items():
        if getattr(args, flag, None):
            raise ConfigError(f"task {info.name} does not take --{flag}: {why}")
    for flag in FLAGS:
        if flag.tasks and info.name not in flag.tasks and getattr(args, flag.dest, None):
            raise ConfigError(f"{flag.name} is a flag of task {', '.join(flag.tasks)} only, not of {info.name}")
    config = load_config(resolve_config_path(info, args), args.opts, schema=ROOT / info.schema)
    for flag in ("bs", "epoch", "lr"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise ConfigError(f"--{flag} must be positive, got {value}")
    if args.bs is not None:
        if args.bs % world_size:
            raise ConfigError(f"--bs {args.bs} is not divisible by the {world_size} processes")
        for key in info.bs_keys:
            set_by_path(config, key, args.bs // world_size)
    if args.epoch is not None:
        config["schedular"]["epochs"] = args.epoch
    if args.lr is not None:
        config["optimizer"]["lr"] = args.lr
        config["schedular"]["lr"] = args.lr
    for key in ("seed", "checkpoint", "fewshot", "resume", "device", "output_hdfs"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    if args.evaluate:
        config["evaluate"] = True
    if args.gmt:
        config["gmt"] = True
    if config.get("gmt"):
        use_translate_test(config, info.name)
    config["output_dir"] = str(args.output_dir or config.get("output_dir") or Path("output") / info.name)
    if Path(config["output_dir"]).exists() and not Path(config["output_dir"]).is_dir():
        raise ConfigError(f"output_dir {config['output_dir']} exists and is not a folder")
    return config


def use_translate_test(config: dict, task: str) -> None:
    """``--gmt``: the test sets are read from ``gmt_test_file`` (IGLUE's machine-translated files), without English."""
    if not config.get("gmt_test_file"):
        raise ConfigError(f"--gmt: task {task} has no translate-test files (config key 'gmt_test_file' is empty)")
    if config.get("fewshot"):
        raise ConfigError("--gmt and --fewshot cannot be combined (few-shot runs test on the human test set)")
    languages = config.get("test_languages")
    if languages is not None:
        config["test_languages"] = [lang for lang in languages if lang != "en"]


def key_of_test_files(config: Mapping) -> str:
    """The config key the test sets come from: ``gmt_test_file`` under ``--gmt``, else ``test_file``."""
    return "gmt_test_file" if config.get("gmt") else "test_file"
