"""Stage 4: fine-tune a pretrained world model with a new actor-critic on an unseen game.

    python launch_finetuning.py --configs defaults minatar finetune \\
        --model_checkpoint runs:/<wm run>/checkpoints/latest.pt --env_id MinAtar/SpaceInvaders-v0

Generators on the new game (random prefill, then this run's own actor) and the fine-tuning
learner run together, as in launch.py; the checkpoint is checked before any process starts.
"""
from __future__ import annotations

import sys
import tempfile

from pydreamer.config import parse_args
from pydreamer.launching.cli import Stage, run_cli
from pydreamer.launching.processes import Child
from pydreamer.launching.stage import check_generator_config, check_learner_config, generators, learner, run_stage
from pydreamer.pretrained import check_compatible, read_pretrained


STAGE = Stage('launch_finetuning', __doc__, ('defaults', 'minatar', 'finetune'), (
    'run and process control', 'environment', 'generators', 'observations', 'learner', 'world model',
    'world-model-only training and fine-tuning', 'actor-critic', 'early-learning'))


def main(argv: list[str]) -> int:
    conf = parse_args(argv, default_sections=('defaults', 'minatar', 'finetune'))
    check_generator_config(conf)
    check_learner_config(conf)
    if not conf.resume_id:
        with tempfile.TemporaryDirectory(prefix='pydreamer-check-') as tmp:
            # the learner says so if it is the previous.pt; the header alone needs no torch here
            loaded = read_pretrained(conf.model_checkpoint, tmp, header_only=True)
        check_compatible(loaded.payload['config'], conf, conf.load_parts, loaded.ref)

    def children(run_id: str) -> list[Child]:
        return generators(conf, run_id) + [learner(conf, run_id, 'finetune_learner')]

    return run_stage(conf, 'finetune', children, tags={
        'arm': 'finetune_frozen_rssm' if conf.freeze_rssm else 'finetune', 'pretrained_checkpoint': conf.model_checkpoint})


if __name__ == '__main__':
    sys.exit(run_cli(main, STAGE))
