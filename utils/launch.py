"""``torchrun`` as run.py starts it: the launcher owns its workers, and a failed or stopped launch ends in one line.

The same launcher (``torch.distributed.run``'s argument parsing and elastic agent), with these differences:

* No worker outlives the launcher. torchrun starts each worker in its own session, so a signal to the launcher's
  process group never reaches them; the launcher forwards every signal of :data:`FORWARDED_SIGNALS` to its workers
  (each one once, however often it arrives) and every worker dies with its launcher (Linux ``PR_SET_PDEATHSIG``),
  as the launcher dies with ``run.py``: a SIGKILL anywhere up the tree takes the workers down with it.
* A stop signal gives the workers ``CCLM_STOP_GRACE_SECONDS`` (default 120) to save their checkpoint before they are
  killed; the workers of a failed job (one worker failed) get :data:`FAILED_JOB_GRACE_SECONDS`.
* The exit code says what happened (the table is :data:`utils.errors.EXIT_CODES`): a worker's user error (2, its
  own line says why), a stop on a signal with the checkpoint saved (75), a stalled rank (3), another failure (the
  worker's code, with one line naming the rank; 128 + N for a worker killed by signal N).
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from utils.errors import EXIT_CODES, STALLED_EXIT_CODE, STOPPED_EXIT_CODE, USER_ERROR_EXIT_CODE, UserError

FORWARDED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
OWNER_ENV = "CCLM_OWNER_PID"        # the pid of the process that started this one (run.py, then the launcher)
STATUS_ENV = "CCLM_LAUNCH_STATUS"   # folder where a worker that stopped on a signal leaves a note for the launcher
GRACE_ENV = "CCLM_STOP_GRACE_SECONDS"
DEFAULT_STOP_GRACE_SECONDS = 120
FAILED_JOB_GRACE_SECONDS = 5
_PR_SET_PDEATHSIG = 1
# the elastic agent logs every failed worker ("failed (exitcode: N) local_rank: ...") and every signal it sends
ELASTIC_LOGGERS = ("torch.distributed.elastic.multiprocessing.api", "torch.distributed.elastic.agent.server.api")


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the process that started it dies (Linux; elsewhere a no-op).

    Only for a process whose starter set :data:`OWNER_ENV` to its pid (run.py for the launcher, the launcher for its
    workers); when that starter is already gone, this process exits at once."""
    owner = os.environ.get(OWNER_ENV)
    if not owner or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(owner):
        if _alive(int(owner)):  # started by another process (the variable was inherited): not ours to follow
            libc.prctl(_PR_SET_PDEATHSIG, 0, 0, 0, 0)
            return
        os._exit(128 + int(signal.SIGKILL))  # the starter died before the request was in place


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leave_stop_note(rank: int, note: dict) -> None:
    """A worker that stopped on a signal tells its launcher (when started by one) whether it saved a checkpoint."""
    folder = os.environ.get(STATUS_ENV)
    if folder and Path(folder).is_dir():
        (Path(folder) / f"rank{rank}.json").write_text(json.dumps(note), encoding="utf-8")


def _stop_notes(folder: Path) -> list[dict]:
    notes = []
    for path in sorted(folder.glob("rank*.json")):
        try:
            notes.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return notes


def _with_defaults(argv: list[str], parser) -> list[str]:
    """torchrun's arguments plus ours where the user gave none: every forwarded signal handled, the stop grace."""
    known = {option for action in parser._actions for option in action.option_strings}
    given = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    extra = []
    if "--signals-to-handle" in known and not given & {"--signals-to-handle", "--signals_to_handle"} \
            and "PET_SIGNALS_TO_HANDLE" not in os.environ:
        extra.append("--signals-to-handle=" + ",".join(FORWARDED_SIGNALS))
    if "--shutdown-timeout" in known and not given & {"--shutdown-timeout", "--shutdown_timeout"} \
            and "PET_SHUTDOWN_TIMEOUT" not in os.environ:
        extra.append(f"--shutdown-timeout={stop_grace_seconds()}")
    return extra + argv


def stop_grace_seconds() -> int:
    """The seconds of :data:`GRACE_ENV` (default :data:`DEFAULT_STOP_GRACE_SECONDS`); a bad value is a user error."""
    value = os.environ.get(GRACE_ENV, str(DEFAULT_STOP_GRACE_SECONDS))
    if not value.strip().isdigit():
        raise UserError(f"{GRACE_ENV}={value!r}: expected a whole number of seconds (e.g. {GRACE_ENV}=300)")
    return int(value)


def _forward_each_signal_once() -> None:
    """torchrun turns a handled signal into SignalException, which stops the agent and signals the workers; a second
    signal arriving while the agent waits for them would abort that wait and orphan them, so repeats are ignored."""
    from torch.distributed.elastic.multiprocessing import api

    original = api._terminate_process_handler
    received: list[int] = []

    def terminate_once(signum, frame):
        if received:
            return
        received.append(signum)
        original(signum, frame)

    api._terminate_process_handler = terminate_once


def _close_failed_jobs_quickly() -> None:
    """When a worker fails, torchrun gives the others 30 s after SIGTERM (when it notices the failure, and again when
    the agent stops the group); a stalled (stopped) worker never answers, and a failed job has nothing left to save,
    so they get FAILED_JOB_GRACE_SECONDS. A stop signal's shutdown passes its own timeout (the stop grace)."""
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
    from torch.distributed.elastic.multiprocessing.api import PContext

    close = PContext.close

    def close_quickly(self, death_sig=None, timeout: float = FAILED_JOB_GRACE_SECONDS) -> None:
        close(self, death_sig, timeout)

    def stop_workers(self, worker_group) -> None:
        self._shutdown(timeout=FAILED_JOB_GRACE_SECONDS)

    PContext.close = close_quickly
    if hasattr(LocalElasticAgent, "_stop_workers"):
        LocalElasticAgent._stop_workers = stop_workers


def _signal_code(code: int) -> int:
    return 128 - code if code < 0 else code


def _failure_code(error) -> int:
    """The launch's exit code for a failed worker group, printing one line where the workers' own lines do not
    already say everything."""
    codes = {rank: failure.exitcode for rank, failure in error.failures.items()}
    if codes and all(code == STOPPED_EXIT_CODE for code in codes.values()):
        return STOPPED_EXIT_CODE  # every worker stopped on a signal after the checkpoint; rank 0 said so
    rank, failure = error.get_first_failure()
    code = failure.exitcode if isinstance(failure.exitcode, int) else 1
    if code in (USER_ERROR_EXIT_CODE, STALLED_EXIT_CODE):
        return code  # the worker's own line names the problem (the file or key, the stalled rank)
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        print(f"launch: {error.name}: rank {rank} was killed by {name}", file=sys.stderr)
        return _signal_code(code)
    meaning = EXIT_CODES.get(code, "its error is above")
    print(f"launch: {error.name} failed on rank {rank} with exit code {code} ({meaning})", file=sys.stderr)
    return code if code > 0 else 1


def main(argv: list[str] | None = None) -> int:
    """Launch as ``python -m torch.distributed.run`` would; the exit code says how the workers ended."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # torchrun logs each failed worker and each signal it sends; this launcher says what happened in one line
    for name in ELASTIC_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    die_with_parent()
    os.environ[OWNER_ENV] = str(os.getpid())
    status = Path(tempfile.mkdtemp(prefix="cclm-launch-"))
    os.environ[STATUS_ENV] = str(status)
    _forward_each_signal_once()
    _close_failed_jobs_quickly()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = get_args_parser()
        run(parser.parse_args(_with_defaults(argv, parser)))
    except UserError as e:
        print(f"launch: {e}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    except ChildFailedError as e:
        return _failure_code(e)
    except SignalException as e:
        if any(note.get("saved") for note in _stop_notes(status)):
            return STOPPED_EXIT_CODE  # the workers saved their checkpoint and said so
        print(f"launch: stopped by {e.sigval.name} before the run had anything to save", file=sys.stderr)
        return 128 + int(e.sigval)
    finally:
        shutil.rmtree(status, ignore_errors=True)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the workers are gone; torch's interpreter teardown would only delay run.py's exit
