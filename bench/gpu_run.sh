#!/usr/bin/env bash
# The one command for a lent GPU, run through the device tool from the repository root:
#     run(command="bash bench/gpu_run.sh", carry=[".whl"], timeout_s=540)
# after `bash bench/gpu_wheels.sh` here. It installs the carried wheels into /tmp/site (the machine's image has
# other versions), prints the versions, runs a seconds-long preflight on the small model (a failure costs no
# compile time), then the measurement (bench/gpu_pretrain_step.py --compile, under 8 minutes; extra arguments are
# passed on). Results: $OUT/gpu_pretrain_step.json (rewritten after every row, so a run cut short keeps its rows)
# and $OUT/gpu_profile.txt; record them in bench/RESULTS.md section 6.
# Checked on a CPU with: PYTHON=.venv/bin/python bash bench/gpu_run.sh --allow-cpu --size small --batches 2 --steps 1
# (the arguments also reach the preflight, after its own).
set -u
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import torch, transformers, timm; print('torch', torch.__version__, '| transformers', \
transformers.__version__, '| timm', timm.__version__, '| cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
"$PY" bench/gpu_pretrain_step.py --size small --batches 2 --warmup 1 --steps 1 --no-profile \
    --json /tmp/preflight.json "$@" || { echo "preflight failed: no full-size run"; exit 1; }
"$PY" bench/gpu_pretrain_step.py --compile "$@"
