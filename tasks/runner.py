"""The run sequence every task shares, written once.

1. flags -> config (schema-checked), process group, the stop signals, the folder's run lock (rank 0; leftover
   temporary files of an interrupted run are removed), logging, the heartbeat, seed, ``config.yaml`` (:func:`start_run`)
2. the data root (a folder, or a generated synthetic world), the task's one-time data preparation on rank 0, the text
   encoder folder and the tokenizer                                                  (:func:`prepare_inputs`)
3. the task's data, its model and starting weights; ``--evaluate`` evaluates once, otherwise the engine trains with
   the evaluation schedule and keeps the history; the best evaluation's rows go to ``results.json`` / ``results.md``
                                                                                     (:meth:`TaskKind.execute`)
A task kind (retrieval, understanding, pre-training, the demo) fills in the steps that differ, through the hooks of
:class:`TaskKind`; a task script says which data, which head and how to score, and calls :func:`run_task`.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing
import os
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from dataset.checked import configure_reading, read_report
from dataset.tokenizer import load_tokenizer
from models.factory import checkpoint_fills_encoders, create_model
from tasks.cli import HANDOFF_ENV, build_config, task_parser
from tasks.environment import load_starting_weights, prepare_text_encoder, resolve_data_root
from tasks.registry import TaskInfo, tasks_of_script
from utils.atomic import remove_leftover_temp_files
from utils.checkpoint import BEST, saved_step
from utils.config import ConfigError, dump_config
from utils.dist import DistEnv, barrier, broadcast_object, cleanup_distributed, init_distributed, world_info_from_env
from utils.engine import Trainer, seed_everything
from utils.errors import USER_ERROR_EXIT_CODE, ReportedElsewhere, UserError, disk_error
from utils.heartbeat import Heartbeat
from utils.interrupt import STOP, RunInterrupted
from utils.launch import die_with_parent, leave_stop_note
from utils.logging import append_jsonl, setup_logging
from utils.precision import autocast_context, resolve_precision
from utils.remote import output_mirror
from utils.results import write_results
from utils.runlock import RunLock

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """What every step of the sequence sees."""

    info: TaskInfo
    config: dict
    env: DistEnv
    output_dir: Path
    args: argparse.Namespace
    root: Path | None = None
    tokenizer: Any = None
    trainer: Trainer | None = None


@dataclass
class Outcome:
    """What training (or one evaluation) produced: the chosen evaluation, the last one, the whole history."""

    metrics: dict                                    # of the chosen evaluation ({} without evaluation)
    evaluate_only: bool = False
    best: dict | None = None                         # {"step", "epoch", "metrics"} of the best evaluation
    last: dict | None = None                         # the same of the last one
    history: dict = field(default_factory=dict)      # step -> {"epoch", "metrics"}
    trainer: Trainer | None = None
    facts: dict = field(default_factory=dict)        # the training plan's facts (Training.facts)


@dataclass
class Training:
    """How a task trains: its batches per epoch, its step, and the state its checkpoints carry."""

    steps_per_epoch: int
    batches: Callable[[int, int], Iterable]          # (epoch, batches to skip) -> the epoch's batches
    train_step: Callable | None = None               # None: the engine's default (one forward, one backward)
    extra_state: Callable[[], Mapping] | None = None  # the task's state saved with each checkpoint
    on_start: Callable[[dict], None] | None = None   # called with the resumed extra state ({} on a fresh start)
    epochs: int | None = None
    facts: dict = field(default_factory=dict)        # JSON facts for results.json (batch size, ...)


class TaskKind:
    """A family of tasks; the default :meth:`execute` is the fine-tuning sequence. Subclasses fill in the hooks."""

    title: str                    # the run's description (help text, results title)
    model_name: str | None        # the create_model name the default execute builds

    def prepare(self, run: Run) -> None:
        """One-time data preparation on rank 0, before any process reads data (e.g. WIT's image join)."""

    def build_data(self, run: Run) -> Any:
        """The task's data (whatever its other hooks take)."""
        raise NotImplementedError

    def evaluator(self, run: Run, data: Any) -> Callable[[nn.Module], Mapping[str, float]] | None:
        """``evaluate(model) -> metrics`` (eval mode, no grad, autocast are set by the caller); None: no evaluation."""
        return None

    def selection(self, data: Any) -> str | None:
        """The metric the best evaluation maximises (``utils.schedule.LAST``: the last evaluation)."""
        return None

    def training(self, run: Run, data: Any, model: nn.Module) -> Training:
        raise NotImplementedError

    def results(self, run: Run, data: Any, outcome: Outcome) -> dict:
        """Write results.json / results.md (rank 0) and return the payload."""
        raise NotImplementedError

    def execute(self, run: Run) -> dict:
        """Data, model, starting weights; one evaluation (``--evaluate``) or training; the results (rank 0)."""
        data = self.build_data(run)
        model = build_model(self.model_name, run)
        evaluate = self.evaluator(run, data)
        if run.config.get("evaluate"):
            if evaluate is None:
                raise UserError(f"task {run.info.name} has no evaluation (--evaluate)")
            metrics = evaluate_once(model, evaluate, run)
            outcome = Outcome(metrics, evaluate_only=True)
        else:
            outcome = train(self, run, data, model, evaluate)
        payload = self.results(run, data, outcome) if run.env.is_main else {}
        barrier()
        return payload


def build_model(name: str | None, run: Run) -> nn.Module:
    """The registered model ``name`` for the run's config, with its starting weights (``--checkpoint``); a checkpoint
    that fills the encoders replaces the initial ImageNet / XLM-R weights, which are then not read."""
    if name is None:
        raise ValueError(f"task {run.info.name}: its kind names no model")
    checkpoint = run.config.get("checkpoint")
    fills = bool(checkpoint) and checkpoint_fills_encoders(name, run.config, checkpoint, root=run.root,
                                                           is_eval=bool(run.config.get("evaluate")))
    model = create_model(name, run.config, root=run.root, initial_weights=not fills)
    load_starting_weights(model, run.config)
    return model


def evaluate_once(model: nn.Module, evaluate: Callable, run: Run) -> dict:
    """One evaluation outside the training loop: eval mode, no grad, the run's precision."""
    model.to(run.env.device).eval()
    with torch.no_grad(), autocast_context(resolve_precision(run.config, run.env.device), run.env.device):
        return dict(evaluate(model))


def train(kind: TaskKind, run: Run, data: Any, model: nn.Module, evaluate: Callable | None) -> Outcome:
    """Train with the engine (resuming when asked); the history's best and last evaluations."""
    plan = kind.training(run, data, model)
    trainer = Trainer(run.config, run.env, model, output_dir=run.output_dir, steps_per_epoch=plan.steps_per_epoch,
                      train_batches=plan.batches, evaluate=evaluate, primary_metric=kind.selection(data),
                      init_params=getattr(model, "init_params", ()), epochs=plan.epochs,
                      extra_state=plan.extra_state, **({"train_step": plan.train_step} if plan.train_step else {}))
    run.trainer = trainer
    if run.config.get("resume"):
        trainer.resume(run.config["resume"])
    elif evaluate is not None and run.config.get("eval_before_training"):
        evaluate_before_training(model, evaluate, run)
    if plan.on_start is not None:
        plan.on_start(trainer.resumed_extra)
    trainer.fit()
    history = trainer.history
    best, last = history.best(), history.last()
    chosen = best or last
    return Outcome(dict(chosen["metrics"]) if chosen else {}, best=best, last=last,
                   history={s: dict(r) for s, r in sorted(history.records.items())}, trainer=trainer,
                   facts=dict(plan.facts))


def evaluate_before_training(model: nn.Module, evaluate: Callable, run: Run) -> None:
    """The reference retrieval scripts' evaluation of the starting weights (logged only, not a selection candidate)."""
    metrics = evaluate_once(model, evaluate, run)
    model.train()
    if run.env.is_main:
        append_jsonl(run.output_dir / "metrics.jsonl", {"epoch": -1, "step": 0, "before_training": True,
                                                        **{f"eval/{k}": v for k, v in metrics.items()}})


def write_task_results(run: Run, rows: Mapping, primary: str, title: str, note: str, extra: Mapping,
                       iglue: bool = True, row_name: str = "language") -> dict:
    """results.json / results.md of the run, with the task's name, checkpoint and protocol flags in ``extra``, and
    (training runs) ``best_checkpoint``: the file holding the weights of the best evaluation and their step."""
    config = run.config
    facts = {"task": run.info.name, "checkpoint": config.get("checkpoint"), "fewshot": config.get("fewshot"),
             "translate_test": bool(config.get("gmt")), **extra}
    if read_report():  # per annotation file read: records read and bad ones skipped (docs/data-formats.md)
        facts["read_report"] = read_report()
        logger.info("annotation files read: %s", json.dumps(facts["read_report"]))
    if run.trainer is not None:
        facts["best_checkpoint"] = best_checkpoint_fact(run.trainer)
    return write_results(run.output_dir, rows, primary=primary, title=title, note=note, extra=facts, iglue=iglue,
                         row_name=row_name)


def best_checkpoint_fact(trainer: Trainer) -> dict | None:
    """``{"file", "step"}`` of the best evaluation's weights, read back from the file (None without a best)."""
    step = trainer.history.best_step()
    if step is None:
        return None
    path = trainer.output_dir / BEST
    saved = saved_step(path) if path.is_file() else None
    if saved != step:  # cannot happen after Trainer.resume's reconciliation; said rather than hidden
        logger.warning("%s holds step %s, not the best evaluation's step %d", path, saved, step)
        return {"file": None, "step": step}
    return {"file": BEST, "step": step}


def start_run(task: str | TaskInfo, argv: Iterable[str] | None, description: str, cleanup: ExitStack) -> Run:
    """Parse the flags, resolve the config, start the process group, handle the stop signals, take the output
    folder (rank 0), set up logging, start the heartbeat, seed, save config.yaml. What needs undoing at the end of the
    run (the lock, the heartbeat, the signal handlers) goes on ``cleanup``.

    ``task``: the script's file name (its tasks come from the registry) or the task's own ``TaskInfo`` (a benchmark
    not in the registry)."""
    served = [task] if isinstance(task, TaskInfo) else tasks_of_script(task)
    args = task_parser(served[0], [t.name for t in served], description).parse_args(
        None if argv is None else list(argv))
    info = next(t for t in served if t.name == args.task)
    _, _, world_size = world_info_from_env()
    config = build_config(info, args, world_size)
    run_keys = config.get("run", {})
    STOP.install(run_keys.get("stop_signals", ()))
    cleanup.callback(STOP.uninstall)
    # run.py --dist cpu sets CCLM_DEVICE so that a GPU machine still runs the CPU job it was asked for.
    env = init_distributed(os.environ.get("CCLM_DEVICE") or config.get("device") or "auto",
                           timeout_minutes=int(run_keys.get("dist_timeout_minutes", 30)))
    output_dir = Path(config["output_dir"])
    takeover, leftovers = take_output_folder(output_dir, env, cleanup)
    setup_logging(output_dir, env.rank)
    if takeover:
        logger.warning("%s", takeover)
    if leftovers:
        logger.info("removed %d temporary file(s) an interrupted run left: %s", len(leftovers),
                    ", ".join(str(p.relative_to(output_dir)) for p in leftovers[:10]))
    heartbeat = Heartbeat(env.rank, env.world_size, float(run_keys.get("heartbeat_timeout_seconds", 0) or 0))
    heartbeat.start()
    cleanup.callback(heartbeat.stop)
    seed_everything(int(config["seed"]) + env.rank)
    if env.is_main:
        dump_config(config, output_dir / "config.yaml")
    output_mirror(config.get("output_hdfs"), output_dir)  # --output_hdfs: checked now, synced by engine and results
    logger.info("task %s: %d process(es) on %s%s, precision %s; this is rank %d; output %s", info.name,
                env.world_size, env.device.type, f" ({env.backend})" if env.backend else "",
                resolve_precision(config, env.device), env.rank, output_dir)
    return Run(info, config, env, output_dir, args)


def check_given_files(config: Mapping) -> None:
    """The files the flags name must exist before any work starts (not after the data is read)."""
    path = config.get("checkpoint")
    if path and "://" not in str(path) and not Path(path).is_file():
        raise FileNotFoundError(f"--checkpoint {path}: no such file")


def prepare_inputs(kind: TaskKind, run: Run) -> None:
    """The data root, the kind's one-time preparation (rank 0; the others wait), the text encoder and tokenizer."""
    check_given_files(run.config)
    run.root = resolve_data_root(run.config)
    configure_reading(run.config)  # skip_bad_samples / max_bad_fraction for every annotation reader of the run
    if run.env.is_main:
        kind.prepare(run)
    barrier()
    if run.config.get("text_encoder"):  # every CCLM task; a task without text (a test's toy) has none
        run.config["text_encoder"] = prepare_text_encoder(run.config, run.root)
        run.tokenizer = load_tokenizer(run.config["text_encoder"])


def take_output_folder(output_dir: Path, env: DistEnv, cleanup: ExitStack) -> tuple[str | None, list[Path]]:
    """Rank 0 locks the output folder for this run (``utils.runlock``) and removes the temporary files an interrupted
    run left there; every rank learns whether the folder was free (a refusal is one line, from rank 0). Returns (the
    line about a stale lock taken over, the leftovers removed), for the log."""
    error, takeover, leftovers = None, None, []
    if env.is_main:
        lock = RunLock(output_dir)
        try:
            lock.acquire()
            cleanup.callback(lock.release)
            takeover = lock.describe_takeover()
            leftovers = remove_leftover_temp_files(output_dir)
        except UserError as e:
            error = e
        except OSError as e:  # the folder cannot be made or written (read-only, full, no permission)
            error = disk_error(e)
            if error is None:
                raise
    refusal = broadcast_object(None if error is None else str(error))
    if error is not None:
        raise error
    if refusal is not None:
        raise ReportedElsewhere(refusal)
    return takeover, leftovers


def run_task(kind: TaskKind, task: str | TaskInfo, argv: Iterable[str] | None = None) -> dict:
    """The whole run of a task script (``task``: its file name, or its own ``TaskInfo``); returns the results.json
    payload on rank 0 ({} on the other ranks)."""
    with started_run(task, argv, kind.title) as run:
        # Collates tokenise in loader workers forked after the main process has tokenised (e.g. xGQA's answer list).
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        prepare_inputs(kind, run)
        return kind.execute(run)


@contextmanager
def started_run(task: str | TaskInfo, argv: Iterable[str] | None, description: str) -> Iterator[Run]:
    """:func:`start_run` for the length of a ``with`` block; at its end the run lets go of what it held (the output
    folder's lock, the heartbeat, the signal handlers, the process group), however the block ends."""
    with ExitStack() as cleanup:
        cleanup.callback(cleanup_distributed)
        yield start_run(task, argv, description, cleanup)


def request_followup(run: Run, task: str, argv: list[str]) -> None:
    """Ask ``run.py`` to launch ``task`` with ``argv`` once this run has ended well (rank 0); without run.py the log
    says which command to run next."""
    if not run.env.is_main:
        return
    target = os.environ.get(HANDOFF_ENV)
    if target:
        Path(target).write_text(json.dumps({"task": task, "argv": argv}) + "\n", encoding="utf-8")
        logger.info("next: run.py launches task %s", task)
    else:
        logger.info("next: python3 run.py --task %s %s", task, " ".join(argv))


def exit_now(code: int) -> None:
    """End a stopped process without the interpreter's slow teardown (the launcher is waiting for it, within the
    grace time the scheduler gave): everything the run writes is written, its loader workers and process group are
    shut down; the logs are flushed here."""
    gc.collect()  # data-loader iterators still referenced from the unwound frames shut their workers down
    for child in multiprocessing.active_children():  # e.g. the demo's forked arm, which leaves stopping to us
        child.terminate()
        child.join(5)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_script(main: Callable[[list], object]) -> None:
    """A task script's entry point: ``main(sys.argv[1:])``, then exit 0. A user error (a bad config, flag,
    annotation, data record or checkpoint, a missing file, a full or read-only disk) ends the process with one logged
    line naming it and exit code 2, instead of a traceback that torchrun would bury under its own. A stop signal ends
    it with the code ``RunInterrupted`` gives (75 once the checkpoint is saved; see ``utils.errors.EXIT_CODES``)."""
    die_with_parent()  # under run.py's launcher: no worker outlives it
    rank = world_info_from_env()[0]
    try:
        main(sys.argv[1:])
    except RunInterrupted as e:
        if rank == 0:
            logger.warning("%s", e.message)
        leave_stop_note(rank, {"saved": e.checkpoint is not None, "step": e.step, "signal": e.signal_name})
        exit_now(e.exit_code)
    except ReportedElsewhere:
        sys.exit(USER_ERROR_EXIT_CODE)
    except (UserError, FileNotFoundError) as e:
        # every process reads the same config: its errors are said once, by rank 0; data errors by whichever rank
        if not (isinstance(e, ConfigError) and rank != 0):
            logger.error("%s: %s", type(e).__name__, e)
        sys.exit(USER_ERROR_EXIT_CODE)
    except OSError as e:
        user_error = disk_error(e)
        if user_error is None:
            raise
        logger.error("%s: %s", type(user_error).__name__, user_error)
        sys.exit(USER_ERROR_EXIT_CODE)
    sys.exit(0)
