#!/usr/bin/env bash
# Fill bench/wheels with what bench/gpu_check.sh installs on a machine that has only PyTorch with
# CUDA (and no network): the wheels of bench/gpu_requirements.txt, for that machine's Python
# (default: this one's; e.g. `bash bench/fetch_gpu_wheels.sh 3.12`). Carry bench/wheels with the
# working tree (about 20 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$version" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any -d bench/wheels -r bench/gpu_requirements.txt
du -sh bench/wheels
