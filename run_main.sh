#!/usr/bin/env bash
# Set up ./.venv if needed, then run the main job on the embedded mlflow store (./mlflow.db, ./mlruns):
# the whole staged MinAtar pipeline at tiny scale (DQN agents -> multi-env dataset -> world model ->
# fine-tuning vs from scratch on an unseen game -> figure). Extra arguments go to experiments/transfer.py.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
.venv/bin/python experiments/transfer.py --scale tiny "$@"
echo
echo "Runs are in ./mlflow.db (artifacts in ./mlruns). Browse them with:"
echo "  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false .venv/bin/mlflow ui --workers 1 --backend-store-uri sqlite:///$PWD/mlflow.db --host 127.0.0.1 --port 5000"
echo "and open http://127.0.0.1:5000/#/?workflowType=machine_learning (the training-runs view), experiment pydreamer."
echo "The DQN agents are in ./dqn_checkpoints_tiny/ (the README's stage 2 reads ./dqn_checkpoints/)."
