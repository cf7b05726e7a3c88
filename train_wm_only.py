"""World-model-only training on a dataset run (the learner process of launch_wm_training.py).

Trains encoder, RSSM and decoders on the episodes of run `mlflow_run_id` (also while its
generators are still writing), with no imagination and no actor-critic; checkpoints, metrics,
evaluation on the data's eval split and dream images go to this stage's own run.
"""
from __future__ import annotations

from pydreamer import learner
from pydreamer.config import Config
from pydreamer.tracking import get_run


def run(conf: Config, run_id: str) -> None:
    still_writing = get_run(conf.mlflow_run_id).info.status == 'RUNNING'
    learner.run(conf, run_id, learner.LearnerSpec(data_run_id=conf.mlflow_run_id, wm_only=True,
                                                  wait_for_data=still_writing))
