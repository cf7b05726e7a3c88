"""Stage 3: train one world model on a (multi-environment) dataset run.

    python launch_wm_training.py --configs defaults minatar wm_training --mlflow_run_id <data run>
"""
from __future__ import annotations

import sys

from pydreamer.artifacts import ArtifactFolder
from pydreamer.config import ConfigError, parse_args
from pydreamer.launching.cli import Stage, run_cli
from pydreamer.launching.stage import check_learner_config, learner, run_stage
from pydreamer.tracking import get_run, setup_tracking


def check_data_run(run_id: str) -> str:
    """The data run must exist, and hold episodes unless its generators are still running; returns
    its games (its `game` tag)."""
    if not run_id:
        raise ConfigError('Config key mlflow_run_id is empty; give the id of the dataset run to train on.')
    setup_tracking()
    run = get_run(run_id)
    if not ArtifactFolder(run_id, 'episodes').list_subfolders() and run.info.status != 'RUNNING':
        raise ConfigError(f'Data run {run_id} ({run.info.status.lower()}) has no episodes/ to train on.')
    return run.data.tags.get('game', '')


STAGE = Stage('launch_wm_training', __doc__, ('defaults', 'minatar', 'wm_training'), (
    'run and process control', 'observations', 'learner', 'world model', 'world-model-only training'))


def main(argv: list[str]) -> int:
    conf = parse_args(argv, default_sections=('defaults', 'minatar', 'wm_training'))
    check_learner_config(conf)
    games = check_data_run(conf.mlflow_run_id)
    return run_stage(conf, 'wm_training', lambda run_id: [learner(conf, run_id, 'wm_learner')],
                     tags={'arm': 'world_model', 'game': games, 'data_run_id': conf.mlflow_run_id})


if __name__ == '__main__':
    sys.exit(run_cli(main, STAGE))
