#!/usr/bin/env python3
"""Create or reuse the project's virtual environment (.venv) and install the pinned requirements into it.

    python3 tools/setup_env.py          # runtime requirements
    python3 tools/setup_env.py --test   # plus the test requirements

A stamp file records the hash of the requirement files installed, so a second call installs nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def requirement_hash(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", action="store_true", help="also install the test requirements")
    args = parser.parse_args(argv)
    if sys.version_info[:2] < (3, 10):
        print(f"Python 3.10+ is needed (3.11 recommended); this is {sys.version.split()[0]}", file=sys.stderr)
        return 1
    req = ROOT / ("requirements-test.txt" if args.test else "requirements.txt")
    files = [ROOT / "requirements.txt"] + ([req] if args.test else [])
    stamp = VENV / f".installed-{'test' if args.test else 'run'}"
    wanted = requirement_hash(files)
    if not venv_python().exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if stamp.exists() and stamp.read_text().strip() == wanted:
        return 0
    print(f"installing {req.name} into {VENV} (the first time takes a few minutes)", flush=True)
    subprocess.run([str(venv_python()), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=False)
    result = subprocess.run([str(venv_python()), "-m", "pip", "install", "-q", "-r", str(req)])
    if result.returncode != 0:
        print(f"pip install -r {req} failed", file=sys.stderr)
        return result.returncode
    stamp.write_text(wanted + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
