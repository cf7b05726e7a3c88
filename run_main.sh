#!/usr/bin/env bash
# Set up ./.venv if needed, then run the main job on the embedded mlflow store (./mlflow.db, ./mlruns).
# Extra arguments are passed to launch.py as config overrides.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
.venv/bin/python launch.py --configs defaults minatar --n_env_steps 20_000 --generator_prefill_steps 20_000 "$@"
echo
echo "Runs are in ./mlflow.db (artifacts in ./mlruns). Browse them with:"
echo "  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false .venv/bin/mlflow ui --workers 1 --backend-store-uri sqlite:///$PWD/mlflow.db --host 127.0.0.1 --port 5000"
