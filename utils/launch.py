"""``torchrun`` as run.py starts it, minus the launcher's own traceback when a worker fails.

The same launcher (``torch.distributed.run``'s argument parsing and elastic agent); a failed worker ends the launch
with one line naming the rank and its exit code, which becomes the launch's exit code (a task script's user error is
2, see ``tasks.runner.run_script``). The worker's own error is printed above it.
"""
from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run


def main(argv: list[str] | None = None) -> int:
    """Launch as ``python -m torch.distributed.run`` would; return the first failed worker's exit code (or 0)."""
    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        print(f"launch: {e.name} failed on rank {rank} with exit code {failure.exitcode} (its error is above)",
              file=sys.stderr)
        return failure.exitcode if isinstance(failure.exitcode, int) and failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
