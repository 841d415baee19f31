"""A toy regression task run through the real launcher, runner and engine: the process tests of stopping on
signals, the run lock, disk failures and stalled ranks use it (a few seconds per run on CPU).

Run as ``run.py --task toy`` from a process that called :func:`register`, or directly as a task
script (``python tests/tasks/toy_script.py --output_dir ...``, also under torchrun).
"""
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tasks.registry import TASKS, TaskInfo  # noqa: E402
from tasks.runner import TaskKind, Training, run_script, run_task, train, write_task_results  # noqa: E402
from tests.utils.toy_task import ToyData, ToyModel  # noqa: E402
from utils.data import build_loader, set_loader_epoch  # noqa: E402
from utils.dist import barrier  # noqa: E402

SCRIPT = str(Path(__file__).resolve())
CONFIG = str(Path(__file__).with_name("toy.yaml"))
INFO = TaskInfo("toy", SCRIPT, CONFIG, str(Path(__file__).with_name("toy_schema.yaml")), "a toy regression",
                bs_keys=("batch_size",))


def paused(loader, seconds: float):
    """The loader's batches, each after a pause (a slow step)."""
    for batch in loader:
        time.sleep(seconds)
        yield batch


class ToyKind(TaskKind):
    title = "a toy regression through the real runner and engine"
    model_name = None

    def build_data(self, run):
        return ToyData(int(run.config["toy"]["examples"]))

    def evaluator(self, run, data):
        def evaluate(model):
            return {"neg_mse": -float(((model.head(model.net(data.x)) - data.y) ** 2).mean())}
        return evaluate

    def selection(self, data):
        return "neg_mse"

    def training(self, run, data, model):
        size, env, pause = int(run.config["batch_size"]), run.env, float(run.config["toy"]["step_seconds"])
        loader = build_loader(data, size, train=True, rank=env.rank, world_size=env.world_size,
                              seed=int(run.config["seed"]))

        def batches(epoch, skip):
            set_loader_epoch(loader, epoch, skip)
            return paused(loader, pause) if pause else loader

        return Training(steps_per_epoch=len(data) // (size * env.world_size), batches=batches)

    def results(self, run, data, outcome):
        chosen = outcome.best or outcome.last
        return write_task_results(run, {"toy": dict(outcome.metrics)}, "neg_mse", "Toy regression", "",
                                  {"best_step": chosen["step"] if chosen else None}, iglue=False, row_name="set")

    def execute(self, run):
        torch.manual_seed(int(run.config["seed"]))  # the same initial weights on every rank
        data = self.build_data(run)
        outcome = train(self, run, data, ToyModel(float(run.config["toy"]["dropout"])), self.evaluator(run, data))
        payload = self.results(run, data, outcome) if run.env.is_main else {}
        barrier()
        return payload


def main(argv=None):
    return run_task(ToyKind(), INFO, argv)


def register() -> None:
    """Put the toy task into the task registry of this process (run.py's, in the process that launches it; never
    the test session's, whose registry tests enumerate)."""
    TASKS[INFO.name] = INFO


# ------------------------------------------------------------------ for the tests that launch it

RUN_PY = ("import sys; sys.path.insert(0, {root!r}); import tests.tasks.toy_script as toy, run; toy.register(); "
          "sys.exit(run.main(sys.argv[1:]))")


def launch(output_dir, *args, dist="cpu", **popen):
    """``run.py --task toy --dist DIST --output_dir OUT ARGS`` as a child process (its own session, so that a test
    may signal its process group), output captured."""
    import subprocess

    cmd = [sys.executable, "-c", RUN_PY.format(root=str(ROOT)), "--task", "toy", "--dist", dist,
           "--output_dir", str(output_dir), *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)


def rows(output_dir):
    """The training rows of metrics.jsonl (those with a loss), in file order."""
    import json

    path = Path(output_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "loss" in row:
            out.append(row)
    return out


def wait_for_step(output_dir, step, process, timeout=120.0):
    """Wait until the run logged ``step`` (a training row); fails with the run's output if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(row["step"] >= step for row in rows(output_dir)):
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended (exit code {process.returncode}) before step {step}:\n"
                                 + process.stdout.read()[-4000:])
        time.sleep(0.1)
    raise AssertionError(f"no step {step} within {timeout} s")


if __name__ == "__main__":
    run_script(main)
