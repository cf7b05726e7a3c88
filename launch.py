"""Classic pydreamer run on one environment: generator processes that store episodes into a new
(or resumed) mlflow run.

    python launch.py --configs defaults minatar [--<key> <value> ...]
"""
from __future__ import annotations

import logging
import sys

from pydreamer import generator
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
    code = run_children(children, threads_per_process(len(children), conf.torch_threads))
    end_run(run_id, 'FINISHED' if code == 0 else 'FAILED' if code == 1 else 'KILLED')
    log.info('Run %s ended (exit code %d).', run_id, code)
    return code


if __name__ == '__main__':
    sys.exit(run_cli(main, 'launch'))
