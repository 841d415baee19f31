"""The command-line flags every task script shares, and the run set-up they lead to (config, processes, logging)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from utils.config import ConfigError, dump_config, load_config, set_by_path
from utils.dist import DistEnv, init_distributed, world_info_from_env
from utils.engine import seed_everything
from utils.errors import USER_ERROR_EXIT_CODE, UserError
from utils.logging import setup_logging
from utils.remote import output_mirror

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]


def add_task_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The original README's flags plus ours (--resume, --opts, --device); run.py forwards them unchanged."""
    parser.add_argument("--config", default=None, help="YAML config (default: the task's)")
    parser.add_argument("--output_dir", default=None, help="where checkpoints, logs and results go")
    parser.add_argument("--bs", type=int, default=None,
                        help="global training batch, split over processes (default: config)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (rank is added per process)")
    parser.add_argument("--epoch", type=int, default=None, help="number of epochs (default: config)")
    parser.add_argument("--checkpoint", default=None, help="weights to start from (released CCLM .th or ours)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: config)")
    parser.add_argument("--fewshot", default=None, help="few-shot spec, e.g. 'de,100' or 'id'")
    parser.add_argument("--evaluate", action="store_true", help="evaluate --checkpoint without training")
    parser.add_argument("--gmt", action="store_true",
                        help="translate-test: evaluate on the machine-translated test files (xvnli, xflickrco, wit)")
    parser.add_argument("--resume", default=None, help="training checkpoint to continue from, or 'latest'")
    parser.add_argument("--device", default=None, choices=("auto", "cuda", "cpu"), help="override config.device")
    parser.add_argument("--output_hdfs", default=None,
                        help="mirror checkpoints, logs and results to this fsspec URL (s3://, gs://, hdfs://, ...)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, a.b=c")
    return parser


@dataclass
class TaskSpec:
    """What the shared set-up needs to know about a task."""

    name: str
    default_config: str                 # relative to the repository root
    schema: str                         # the base config whose keys are the only ones allowed
    bs_keys: Sequence[str] = ()         # config keys --bs sets (per-process batch = bs // world size)
    fewshot_config: str | None = None   # used instead of default_config when --fewshot is given
    # flags the task cannot honour -> why (or what to run instead): given, they are an error, never ignored
    unsupported_flags: Mapping[str, str] = field(default_factory=dict)


@dataclass
class RunContext:
    config: dict
    env: DistEnv
    output_dir: Path
    args: argparse.Namespace


def parse_task_args(argv: Iterable[str] | None, description: str) -> argparse.Namespace:
    """Parse the shared flags (unknown flags are an error naming them)."""
    parser = add_task_arguments(argparse.ArgumentParser(description=description))
    return parser.parse_args(None if argv is None else list(argv))


def build_config(spec: TaskSpec, args: argparse.Namespace, world_size: int) -> dict:
    """Load the config (schema-checked) and apply the command-line flags to it."""
    path = args.config or (spec.fewshot_config if args.fewshot and spec.fewshot_config else spec.default_config)
    path = path if Path(path).is_absolute() or Path(path).exists() else str(ROOT / path)
    for flag, why in spec.unsupported_flags.items():
        if getattr(args, flag, None):
            raise ConfigError(f"task {spec.name} does not take --{flag}: {why}")
    config = load_config(path, args.opts, schema=ROOT / spec.schema)
    for flag in ("bs", "epoch", "lr"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise ConfigError(f"--{flag} must be positive, got {value}")
    if args.bs is not None:
        if args.bs % world_size:
            raise ConfigError(f"--bs {args.bs} is not divisible by the {world_size} processes")
        for key in spec.bs_keys:
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
        use_translate_test(config, spec.name)
    config["output_dir"] = str(args.output_dir or config.get("output_dir") or Path("output") / spec.name)
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


def setup_run(spec: TaskSpec, argv: Iterable[str] | None, description: str = "") -> RunContext:
    """Parse flags, resolve the config, start the process group, seed, set up logging, save config.yaml."""
    args = parse_task_args(argv, description or spec.name)
    _, _, world_size = world_info_from_env()
    config = build_config(spec, args, world_size)
    # run.py --dist cpu sets CCLM_DEVICE so that a GPU machine still runs the CPU job it was asked for.
    env = init_distributed(os.environ.get("CCLM_DEVICE") or config.get("device") or "auto",
                           timeout_minutes=int(config.get("run", {}).get("dist_timeout_minutes", 30)))
    output_dir = Path(config["output_dir"])
    if env.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(output_dir, env.rank)
    seed_everything(int(config["seed"]) + env.rank)
    if env.is_main:
        dump_config(config, output_dir / "config.yaml")
    output_mirror(config.get("output_hdfs"), output_dir)  # --output_hdfs: checked now, synced by engine and results
    logger.info("task %s: rank %d/%d on %s, output %s", spec.name, env.rank, env.world_size, env.device, output_dir)
    return RunContext(config, env, output_dir, args)


def run_script(main: Callable[[list], object]) -> None:
    """A task script's entry point: ``main(sys.argv[1:])``, then exit 0. A user error (a bad config, flag,
    annotation or data record, a missing file) ends the process with one logged line naming it and exit code 2,
    instead of a traceback that torchrun would bury under its own."""
    try:
        main(sys.argv[1:])
    except (UserError, FileNotFoundError) as e:
        logger.error("%s: %s", type(e).__name__, e)
        sys.exit(USER_ERROR_EXIT_CODE)
    sys.exit(0)
