"""Slow-write injection for the process tests: ``python -m tests.slow_writes SCRIPT ARGS`` runs a task script in
which the N-th rename onto a file named NAME (``CCLM_TEST_SLOW_WRITE=NAME:N``) first creates the file named by
``CCLM_TEST_SLOW_WRITE_MARK`` and then waits: the new file's data is written, its rename not done, so the test can
kill the run in the middle of that write. Nothing else of the run is changed."""
import os
import runpy
import sys
import time

SPEC_ENV, MARK_ENV = "CCLM_TEST_SLOW_WRITE", "CCLM_TEST_SLOW_WRITE_MARK"


def install() -> None:
    """Make the write named by the environment slow (a no-op without it)."""
    spec = os.environ.get(SPEC_ENV)
    if not spec:
        return
    name, nth = spec.rsplit(":", 1)
    mark, original, seen = os.environ[MARK_ENV], os.replace, []

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(os.fspath(dst)) == name:
            seen.append(dst)
            if len(seen) == int(nth):
                open(mark, "w").close()
                time.sleep(3600)
        return original(src, dst, *args, **kwargs)

    os.replace = replace


if __name__ == "__main__":
    install()
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
