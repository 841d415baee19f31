"""Runs that survive their operators (tasks/runner.py with the engine, the launcher and the run lock), on real
processes: run.py launches the toy task of toy_script.py (a few seconds a run), the test signals or kills it."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import Retrieval
import XVNLI
from tests.processes import alive, kill_process_tree, process_tree
from tests.slow_writes import MARK_ENV, SPEC_ENV
from tests.tasks.toy_script import launch, rows, wait_for_step
from utils.checkpoint import BEST, LATEST, load_training_state
from utils.errors import STOPPED_EXIT_CODE
from utils.logging import START_MARKER
from utils.runlock import LOCK_NAME

ROOT = Path(__file__).resolve().parents[2]


def finish(process, timeout=180):
    """(exit code, output) of a launched run."""
    out = process.communicate(timeout=timeout)[0]
    return process.returncode, out


def assert_same_training_state(a_dir, b_dir):
    """The two runs' final checkpoints hold the same step, weights and optimiser state, bit for bit."""
    a, b = load_training_state(a_dir / LATEST), load_training_state(b_dir / LATEST)
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for index, moments in a["optimizer"]["state"].items():
        for key, value in moments.items():
            torch.testing.assert_close(b["optimizer"]["state"][index][key], value, rtol=0, atol=0, msg=key)
    assert a["scheduler"] == b["scheduler"]


def wait_until_gone(pids, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


STOPS = [  # (processes, signal, sent to run.py's pid or to its process group as a terminal's Ctrl-C is)
    (1, signal.SIGTERM, "pid"), (2, signal.SIGTERM, "pid"),
    pytest.param(2, signal.SIGINT, "group", marks=pytest.mark.slow),
    pytest.param(1, signal.SIGUSR1, "group", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("world,sig,to", STOPS, ids=lambda v: getattr(v, "name", str(v)))
def test_a_stop_signal_to_run_py_saves_at_a_step_boundary_and_the_resume_is_exact(tmp_path, world, sig, to):
    opts = ["--opts", f"toy.examples={48 * world}"]  # 6 steps per epoch, 12 in all, on any number of processes
    dist = f"cpu:{world}"
    full = launch(tmp_path / "full", *opts, dist=dist)
    part_dir = tmp_path / "part"
    part = launch(part_dir, *opts, "toy.step_seconds=0.3", dist=dist)
    wait_for_step(part_dir, 2, part)
    tree = process_tree(part.pid)
    assert len(tree) >= 2 + world  # run.py, the launcher, the workers
    sent = time.monotonic()
    (os.kill if to == "pid" else os.killpg)(part.pid, sig)
    code, out = finish(part)
    took = time.monotonic() - sent
    print(f"{sig.name} to run.py ({to}, {world} process(es)) to its exit: {took:.1f} s")
    assert code == STOPPED_EXIT_CODE, out[-3000:]
    assert took < 10, f"{took:.1f} s from {sig.name} to exit"
    assert not wait_until_gone(tree, timeout=2), "processes of the run outlived it"
    stopped = load_training_state(part_dir / LATEST)
    assert 2 <= stopped["step"] < 12 and f"stopped by {sig.name} after step {stopped['step']}" in out
    assert "Traceback" not in out

    (part_dir / f".{LATEST}.tmp99999").write_bytes(b"half a checkpoint")  # what a kill mid-write leaves
    code, out = finish(launch(part_dir, *opts, "--resume", "latest", dist=dist))
    assert code == 0, out[-3000:]
    assert not (part_dir / f".{LATEST}.tmp99999").exists()
    assert finish(full)[0] == 0
    assert_same_training_state(tmp_path / "full", part_dir)
    assert [row["step"] for row in rows(part_dir)] == list(range(1, 13))  # each step once after the resume
    assert (part_dir / "log.txt").read_text().count(START_MARKER) == 2


def test_one_run_per_folder_and_a_killed_tree_leaves_no_process_and_a_stale_lock(tmp_path):
    out_dir = tmp_path / "run"
    first = launch(out_dir, "--opts", "toy.step_seconds=0.3", "toy.examples=960")  # 4 minutes unless stopped
    wait_for_step(out_dir, 1, first)

    code, out = finish(launch(out_dir))
    refusal = [line for line in out.splitlines() if line.strip()]
    assert code == 2 and len(refusal) == 1, out
    assert "is in use by another run: pid" in refusal[0] and "choose another --output_dir" in refusal[0]

    tree = process_tree(first.pid)
    worker = tree[-1]
    os.killpg(first.pid, signal.SIGKILL)  # run.py's process group: run.py alone (the launcher has its own session)
    first.communicate(timeout=30)
    assert not wait_until_gone(tree), "a worker outlived its launcher"
    assert (out_dir / LOCK_NAME).is_file()  # left by the killed run: stale

    code, out = finish(launch(out_dir, "--opts", "toy.examples=8"))  # a short run: 2 steps
    assert code == 0, out[-3000:]
    assert f"took over the lock of a run that is gone: pid {worker}" in out
    assert not (out_dir / LOCK_NAME).exists()


# ------------------------------------------------------------------ best and latest after a kill during a best write

TINY = ROOT / "configs" / "tiny"
QUICK = ["run.progress=false", "run.log_every=1", "run.num_workers=0"]
TASK_RUNS = {  # a classification and a retrieval task, small enough for a few seconds an epoch
    "xvnli": (XVNLI, TINY / "xvnli.yaml", ["--bs", "8", "--epoch", "2", "--opts", *QUICK, "test_languages=[en]",
                                           "train_file=[iglue/datasets/XVNLI/annotations/en/train_10.jsonl]",
                                           "test_file=iglue/datasets/XVNLI/annotations/{lang}/dev.jsonl"]),
    "itr_multi30k": (Retrieval, TINY / "itr_multi30k.yaml", ["--bs", "32", "--epoch", "2", "--opts", *QUICK,
                                                             "train_file=[data/finetune/multi30k/train.en.json]",
                                                             "test_languages=[en]", "val_languages=[en]"]),
}


def kill_during_write(script, argv, name, nth, mark, timeout=300):
    """Run a task script whose ``nth`` write of the file ``name`` stalls before its rename; SIGKILL it there."""
    env = {**os.environ, SPEC_ENV: f"{name}:{nth}", MARK_ENV: str(mark)}
    process = subprocess.Popen([sys.executable, "-m", "tests.slow_writes", script, *argv], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not mark.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            kill_process_tree(process.pid)
            raise AssertionError(f"the run never reached write {nth} of {name}:\n{process.stdout.read()[-3000:]}")
        time.sleep(0.1)
    kill_process_tree(process.pid)


@pytest.mark.slow  # 1 to 2.5 minutes each on 2 busy cores (three runs of a tiny model)
@pytest.mark.parametrize("task", list(TASK_RUNS))
def test_a_kill_during_the_best_write_leaves_best_and_latest_consistent_after_the_resume(tmp_path, task):
    module, config, opts = TASK_RUNS[task]
    common = ["--config", str(config), *opts]
    full = tmp_path / "full"
    module.main(["--output_dir", str(full), *common])
    best_writes = (full / "log.txt").read_text().count(" + best (")
    assert best_writes >= 1

    part = tmp_path / "part"  # killed during its last best write: latest names the new best, best is older or absent
    kill_during_write(Path(module.__file__).name, ["--output_dir", str(part), *common], BEST, best_writes,
                      tmp_path / "waiting")
    assert list(part.glob(f".{BEST}.tmp*")), "the killed write left its temporary file"
    latest = load_training_state(part / LATEST)
    assert latest["best"]["step"] == latest["step"]
    assert not (part / BEST).exists() or torch.load(part / BEST, weights_only=True)["step"] < latest["step"]

    module.main(["--output_dir", str(part), "--resume", "latest", *common])
    assert not list(part.glob(".*.tmp*"))
    assert "re-derived for the best evaluation" in (part / "log.txt").read_text()
    reference, resumed = (json.loads((d / "results.json").read_text())["extra"] for d in (full, part))
    best = torch.load(part / BEST, weights_only=True)
    assert resumed["best_checkpoint"] == {"file": BEST, "step": best["step"]} == reference["best_checkpoint"]
    assert resumed.get("best_epoch") == reference.get("best_epoch") == best["best"]["epoch"]
    if "best_step" in reference:
        assert resumed["best_step"] == reference["best_step"] == best["step"]
    if "evaluations" in reference:  # the history results.json reports: every evaluation once, the best among them
        assert resumed["evaluations"] == reference["evaluations"]
        assert best["step"] in [row["step"] for row in resumed["evaluations"]]
    assert best["best"]["step"] == best["step"]  # the file's own pointer names its weights' step
    expected = torch.load(full / BEST, weights_only=True)["model"]
    for key, value in expected.items():  # the weights of the best evaluation, as the uninterrupted run saved them
        torch.testing.assert_close(best["model"][key], value, rtol=0, atol=0, msg=key)


# ------------------------------------------------------------------ disks that fail

TOY = [sys.executable, str(ROOT / "tests" / "tasks" / "toy_script.py")]


def error_lines(out):
    return [line for line in out.splitlines() if " ERROR " in line or line.startswith(("DiskError", "UserError"))]


def assert_no_temporary_files(folder):
    left = [p.name for p in Path(folder).rglob(".*") if ".tmp" in p.name]
    assert not left, left


def test_a_file_size_limit_fails_the_checkpoint_write_in_one_line_and_leaves_no_temporary_file(tmp_path):
    import resource

    out_dir = tmp_path / "run"
    limit = 20_000  # the toy's training checkpoint is about 40 kB; its logs stay below the limit

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run([*TOY, "--output_dir", str(out_dir)], cwd=ROOT, capture_output=True, text=True,
                            preexec_fn=limited, timeout=180)
    out = result.stdout + result.stderr
    errors = error_lines(out)
    assert result.returncode == 2 and len(errors) == 1, out[-3000:]
    assert f"cannot write {out_dir / LATEST}: File too large (the file is larger than this process may write" \
        in errors[0]
    assert "Traceback" not in out
    assert_no_temporary_files(out_dir)
    assert not (out_dir / LATEST).exists()


NAMESPACE_RUN = r'''
import json, os, subprocess, sys, time
disk, out, mode, toy = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "none", disk], check=True)
run_dir = os.path.join(disk, "run")
facts = {}
if mode == "read-only":
    subprocess.run(["mount", "-o", "remount,ro", disk], check=True)
    child = subprocess.run([*toy, "--output_dir", run_dir], capture_output=True, text=True)
else:  # full: fill the disk once the first checkpoint is there, while the run goes on
    child = subprocess.Popen([*toy, "--output_dir", run_dir, "--opts", "toy.step_seconds=0.2",
                              "run.ckpt_every_steps=2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not os.path.exists(os.path.join(run_dir, "checkpoint_latest.pth")) and child.poll() is None:
        time.sleep(0.05)
    with open(os.path.join(disk, "filler"), "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 4096)
        except OSError:
            pass
    facts["free_when_full"] = os.statvfs(disk).f_bfree
    child.stdout_text = child.communicate()[0]
    child.stderr = ""
facts.update(code=child.returncode, out=getattr(child, "stdout_text", None) or child.stdout + child.stderr,
             files=sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else [],
             free_after=os.statvfs(disk).f_bfree)
if os.path.exists(os.path.join(run_dir, "checkpoint_latest.pth")):
    import torch
    facts["latest_step"] = torch.load(os.path.join(run_dir, "checkpoint_latest.pth"), weights_only=True)["step"]
with open(out, "w") as f:
    json.dump(facts, f)
'''


def in_a_small_disk(tmp_path, mode):
    """Run the toy in a 2 MB tmpfs of a private mount namespace (``unshare``, no privileges needed where user
    namespaces are enabled); skips where they are not."""
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here (unshare -rm: {probe.stderr.decode().strip()})")
    disk, facts = tmp_path / "disk", tmp_path / "facts.json"
    disk.mkdir()
    script = tmp_path / "namespace_run.py"
    script.write_text(NAMESPACE_RUN)
    subprocess.run(["unshare", "-rm", sys.executable, str(script), str(disk), str(facts), mode, *TOY], cwd=ROOT,
                   check=True, timeout=300)
    return json.loads(facts.read_text())


def test_a_full_disk_is_one_line_keeps_the_previous_checkpoint_and_leaves_the_disk_as_it_was(tmp_path):
    facts = in_a_small_disk(tmp_path, "full")
    errors = error_lines(facts["out"])
    assert facts["code"] == 2 and len(errors) == 1, facts["out"][-3000:]
    assert "No space left on device (the disk is full: free space on it)" in errors[0]
    assert "Traceback" not in facts["out"]
    assert not [name for name in facts["files"] if ".tmp" in name]
    assert facts["free_after"] >= facts["free_when_full"]  # the failed write's partial file is gone
    assert facts["latest_step"] >= 2  # the checkpoint written before the disk filled is intact


def test_a_read_only_output_folder_is_one_line(tmp_path):
    facts = in_a_small_disk(tmp_path, "read-only")
    errors = error_lines(facts["out"])
    assert facts["code"] == 2 and len(errors) == 1, facts["out"][-3000:]
    assert "Read-only file system (the file system is read-only: choose a writable --output_dir)" in errors[0]


# ------------------------------------------------------------------ checkpoints the user must replace

def script_errors(main, argv):
    """A task script's entry point (``run_script(main)``) as a worker runs it: (exit code, the ERROR lines it
    logged)."""
    import logging

    from tasks.runner import run_script

    records = []
    handler = logging.Handler(level=logging.ERROR)
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    try:
        with pytest.raises(SystemExit) as info:
            run_script(lambda _: main(argv))
    finally:
        logging.getLogger().removeHandler(handler)
    return info.value.code, [r.getMessage() for r in records]


class Payload:
    def __reduce__(self):
        return (os.system, ("echo unsafe payload ran",))


def test_resume_checkpoints_the_user_must_replace_are_one_line_and_exit_code_2(tmp_path):
    from tests.tasks import toy_script

    trained = tmp_path / "trained"
    assert script_errors(toy_script.main, ["--output_dir", str(trained)])[0] == 0
    state = torch.load(trained / LATEST, weights_only=False)
    cases = {}
    torch.save({**state, "payload": Payload()}, tmp_path / "unsafe.pth")
    cases["unsafe.pth"] = "is unsafe to load: it holds Python objects other than tensors (it names posix.system)"
    data = (trained / LATEST).read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[:len(data) // 3])
    cases["truncated.pth"] = "is damaged or incomplete"
    torch.save({"model": state["model"]}, tmp_path / "weights.pth")
    cases["weights.pth"] = "not a training checkpoint (it has no optimizer, epoch, step, rng); to start from model " \
                           "weights use --checkpoint instead of --resume"
    torch.save({**state, "model": {**state["model"], "extra.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    cases["other.pth"] = "its weights do not fit this ToyModel (a checkpoint of another task or model size?)"
    for name, says in cases.items():
        code, errors = script_errors(toy_script.main, ["--output_dir", str(tmp_path / f"run-{name}"), "--resume",
                                                       str(tmp_path / name)])
        assert code == 2 and len(errors) == 1, (name, errors)
        assert str(tmp_path / name) in errors[0] and says in errors[0], errors[0]
        assert "weights_only=False" not in errors[0] and "\n" not in errors[0]


def test_evaluate_with_another_tasks_or_an_unsafe_or_truncated_checkpoint_is_one_line(tmp_path):
    xvnli = tmp_path / "xvnli"
    module, config, opts = TASK_RUNS["xvnli"]
    module.main(["--output_dir", str(xvnli), "--config", str(config), *opts, "run.max_steps=1"])
    code, errors = script_errors(Retrieval.main, ["--config", str(TINY / "itr_multi30k.yaml"), "--evaluate",
                                                     "--checkpoint", str(xvnli / BEST), "--output_dir",
                                                     str(tmp_path / "eval"), "--opts", *QUICK, "test_languages=[en]",
                                                     "val_languages=[en]"])
    assert code == 2 and len(errors) == 1 and str(xvnli / BEST) in errors[0], errors

    # the same file made unsafe, then cut short, as --checkpoint of an evaluation: one line, never "weights_only=False"
    state = torch.load(xvnli / BEST, weights_only=True)
    torch.save({**state, "payload": Payload()}, tmp_path / "unsafe.pth")
    (tmp_path / "truncated.pth").write_bytes((xvnli / BEST).read_bytes()[:4096])
    for name in ("unsafe.pth", "truncated.pth"):
        code, errors = script_errors(XVNLI.main, ["--config", str(config), "--evaluate", "--checkpoint",
                                                  str(tmp_path / name), "--output_dir", str(tmp_path / f"eval-{name}"),
                                                  "--opts", *QUICK, "test_languages=[en]"])
        assert code == 2 and len(errors) == 1 and str(tmp_path / name) in errors[0], (name, errors)
        assert "weights_only=False" not in errors[0] and "\n" not in errors[0]
