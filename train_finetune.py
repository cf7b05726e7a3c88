"""Fine-tuning learner (the learner process of launch_finetuning.py).

Starts from the world model (or everything, `load_parts: all`) of `model_checkpoint` with fresh
optimizers, trains world model and a new actor-critic jointly for `n_steps_wm` steps and the
actor-critic alone after that, up to `n_steps`. Parts chosen by freeze_rssm / freeze_encoder /
freeze_decoder are never trained. What was loaded, frozen and trained is logged and tagged.
"""
from __future__ import annotations

import functools

from pydreamer import learner
from pydreamer.config import Config
from pydreamer.pretrained import frozen_prefixes, load_pretrained


def run(conf: Config, run_id: str) -> None:
    learner.run(conf, run_id, learner.LearnerSpec(
        wm_steps=conf.n_steps_wm, freeze=frozen_prefixes(conf),
        prepare=functools.partial(load_pretrained, conf)))
