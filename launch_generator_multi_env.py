"""Stage 2: generate the multi-environment dataset into a new (or resumed) mlflow run.

    python launch_generator_multi_env.py --configs defaults minatar generator_multi_env
    python launch_generator_multi_env.py --configs defaults atari generator_multi_env_atari
"""
from __future__ import annotations

import sys

from pydreamer.config import Config, ConfigError, parse_args
from pydreamer.launching.cli import Stage, run_cli
from pydreamer.launching.stage import check_generator_config, generators, run_stage


STAGE = Stage('launch_generator_multi_env', __doc__, ('defaults', 'minatar', 'generator_multi_env'), (
    'run and process control', 'environment', 'generators'))


def check_env_list(conf: Config) -> None:
    if isinstance(conf.env_id, str):
        raise ConfigError(f'Config key env_id must be a list of env ids for the multi-env generator, '
                          f'got the single id {conf.env_id!r}; write it as [{conf.env_id}].')


def main(argv: list[str]) -> int:
    conf = parse_args(argv, default_sections=('defaults', 'minatar', 'generator_multi_env'))
    check_env_list(conf)
    check_generator_config(conf)
    return run_stage(conf, 'generator_multi_env', lambda run_id: generators(conf, run_id, 'multi_env_generator'),
        tags={'arm': 'dataset'})


if __name__ == '__main__':
    sys.exit(run_cli(main, STAGE))
