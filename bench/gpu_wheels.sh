#!/usr/bin/env bash
# Run here (where PyPI is reachable), once per session that has a GPU: the pinned pure-Python packages that the GPU
# machine's image holds in other versions (it has torch 2.11, transformers 5.17 and an unknown timm; our text and
# vision encoders rely on transformers 5.24's and timm 1.0.31's internals). They go to .whl/ (git-ignored), which
# the device call carries: see bench/gpu_run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl transformers==5.24.0 timm==1.0.31
ls -l .whl
