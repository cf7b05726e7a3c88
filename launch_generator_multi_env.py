"""Stage 2: generate the multi-environment dataset into a new (or resumed) mlflow run.

    python launch_generator_multi_env.py --configs defaults minatar generator_multi_env
    python launch_generator_multi_env.py --configs defaults atari generator_multi_env_atari
"""
from __future__ import annotations

import sys

import generator_multi_env
from pydreamer.cli import Stage, run_cli
from pydreamer.config import parse_args
from pydreamer.processes import Child
from pydreamer.stage import check_generator_config, run_stage


STAGE = Stage('launch_generator_multi_env', __doc__, ('defaults', 'minatar', 'generator_multi_env'), (
    'run and process control', 'environment', 'generators'))


def main(argv: list[str]) -> int:
    conf = parse_args(argv, default_sections=('defaults', 'minatar', 'generator_multi_env'))
    generator_multi_env.check(conf)
    check_generator_config(conf)
    return run_stage(conf, 'generator_multi_env', lambda run_id: [
        Child(f'generator-{w}', 'generator_multi_env:run', (conf, run_id, w)) for w in range(conf.generator_workers)],
        tags={'arm': 'dataset'})


if __name__ == '__main__':
    sys.exit(run_cli(main, STAGE))
