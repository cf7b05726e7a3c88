#!/usr/bin/env bash
# The GPU check in one call, on a machine with PyTorch (CUDA) and nothing else: installs the few
# wheels carried in bench/wheels (bench/fetch_gpu_wheels.sh), then runs the CUDA model tests, the
# learner's step time for the minatar and atari configs and a short real training run
# (bench/gpu_check.py), and prints one table. Within 8 minutes on one GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ -d bench/wheels ]; then
    "$PY" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --find-links bench/wheels \
        -r bench/gpu_requirements.txt
fi
export PYTHONPATH="$PWD"
"$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
"$PY" bench/gpu_check.py "$@"
