"""``torchrun`` as run.py starts it, minus the launcher's own traceback when a worker fails.

The same launcher (``torch.distributed.run``'s argument parsing and elastic agent); a failed worker's exit code
becomes the launch's exit code. A user error (exit code 2, see ``tasks.runner.run_script``) was already reported by the
worker in one line, so the launcher adds nothing after it; any other failure ends with one line naming the rank and
its exit code, below the worker's own error.
"""
from __future__ import annotations

import logging
import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

from utils.errors import USER_ERROR_EXIT_CODE

# the elastic agent logs every failed worker ("failed (exitcode: N) local_rank: ..."); the exit code says it all
ELASTIC_LOGGERS = ("torch.distributed.elastic.multiprocessing.api", "torch.distributed.elastic.agent.server.api")


def main(argv: list[str] | None = None) -> int:
    """Launch as ``python -m torch.distributed.run`` would; return the first failed worker's exit code (or 0)."""
    for name in ELASTIC_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode if isinstance(failure.exitcode, int) and failure.exitcode > 0 else 1
        if code != USER_ERROR_EXIT_CODE:
            print(f"launch: {e.name} failed on rank {rank} with exit code {failure.exitcode} (its error is above)",
                  file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
