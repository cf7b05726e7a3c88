"""Classic pydreamer run (the from-scratch baseline): generator processes that store episodes into
a new (or resumed) mlflow run and a learner that trains a Dreamer on them; the generators switch
to the learner's newest actor after prefill. The job ends when the learner reaches n_steps
(with n_steps 0 it is a data-only run that ends when the generators reach n_env_steps).

    python launch.py --configs defaults minatar [--<key> <value> ...]
    python launch.py --configs defaults minatar --resume_id <run id>    # continue a run
"""
from __future__ import annotations

import sys

from pydreamer.config import ConfigError, parse_args
from pydreamer.launching.cli import Stage, run_cli
from pydreamer.launching.processes import Child
from pydreamer.launching.stage import check_generator_config, check_learner_config, generators, learner, run_stage


STAGE = Stage('launch', __doc__, ('defaults',), (
    'run and process control', 'environment', 'generators', 'observations', 'learner', 'world model',
    'actor-critic', 'early-learning'))


def main(argv: list[str]) -> int:
    conf = parse_args(argv)
    if conf.n_steps == 0 and 'network' in (conf.policy_main, conf.generator_prefill_policy):
        raise ConfigError('A data-only run (n_steps 0) has no learner to provide the network policy; '
                          'set policy_main to random, dqn or atari_net.')
    check_generator_config(conf)
    if conf.n_steps > 0:
        check_learner_config(conf)

    def children(run_id: str) -> list[Child]:
        return generators(conf, run_id) + ([learner(conf, run_id)] if conf.n_steps > 0 else [])

    return run_stage(conf, 'launch', children, tags={'arm': 'scratch'})


if __name__ == '__main__':
    sys.exit(run_cli(main, STAGE))
