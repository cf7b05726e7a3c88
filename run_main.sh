#!/usr/bin/env bash
# Set up ./.venv if needed, then run the main job on the embedded mlflow store (./mlflow.db, ./mlruns):
# a small from-scratch Dreamer run on MinAtar Breakout. Extra arguments are config overrides.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
.venv/bin/python launch.py --configs defaults minatar --run_name main-job \
    --n_steps 200 --generator_prefill_steps 5000 --log_interval 20 --logbatch_interval 100 \
    --save_interval 100 --eval_interval 100 "$@"
echo
echo "Runs are in ./mlflow.db (artifacts in ./mlruns). Browse them with:"
echo "  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false .venv/bin/mlflow ui --workers 1 --backend-store-uri sqlite:///$PWD/mlflow.db --host 127.0.0.1 --port 5000"
