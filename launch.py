"""Classic pydreamer run (the from-scratch baseline): generator processes that store episodes into
a new (or resumed) mlflow run and a learner that trains a Dreamer on them; the generators switch
to the learner's newest actor after prefill. The job ends when the learner reaches n_steps
(with n_steps 0 it is a data-only run that ends when the generators reach n_env_steps).

    python launch.py --configs defaults minatar [--<key> <value> ...]
    python launch.py --configs defaults minatar --resume_id <run id>    # continue a run
"""
from __future__ import annotations

import logging
import sys

from pydreamer import generator, learner
from pydreamer.cli import run_cli
from pydreamer.config import ConfigError, parse_args
from pydreamer.envs import make_env
from pydreamer.processes import Child, run_children, threads_per_process
from pydreamer.tracking import end_run, setup_tracking, start_run

log = logging.getLogger('launch')


def check_env(conf) -> None:
    """Fail before starting processes when the env id is unknown or disagrees with action_dim."""
    for env_id in generator.env_id_list(conf.env_id):
        env = make_env(env_id, action_repeat=conf.env_action_repeat)
        n_actions = env.action_dim
        env.close()
        if conf.action_dim and conf.action_dim != n_actions:
            raise ConfigError(f'Config key action_dim is {conf.action_dim} but {env_id} has {n_actions} actions.')


def main(argv: list[str]) -> int:
    conf = parse_args(argv)
    check_env(conf)
    uri = setup_tracking()
    run_id = start_run(conf, stage='launch')
    log.info('Tracking store: %s', uri)
    children = [Child(f'generator-{w}', generator.run, (conf, run_id, w))
                for w in range(conf.generator_workers)]
    if conf.n_steps > 0:
        children.append(Child('learner', learner.run, (conf, run_id), ends_job=True))
    code = run_children(children, threads_per_process(len(children), conf.torch_threads))
    end_run(run_id, 'FINISHED' if code == 0 else 'FAILED' if code == 1 else 'KILLED')
    log.info('Run %s ended (exit code %d).', run_id, code)
    return code


if __name__ == '__main__':
    sys.exit(run_cli(main, 'launch'))
