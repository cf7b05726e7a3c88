"""Play a trained agent in the real environment and record the evaluation as an mlflow run.

    python evaluate.py --checkpoint runs:/<run_id>/checkpoints/latest.pt --env_id MinAtar/Breakout-v0
    python evaluate.py --checkpoint dqn_checkpoints/breakout --env_id MinAtar/Breakout-v0 --greedy

The agent is a Dreamer checkpoint (its actor), a DQN agent folder or file (MinAtar) or a DQN_modern
agent folder (Atari), as a local path or a runs:/ URI. The run (tags stage: evaluate and
source_run_id) holds eval/return with its standard error over episodes, the episode lengths, the
table printed here (evaluation.md) and a GIF of the first episode (videos/episode_0.gif).
"""
from __future__ import annotations

import argparse
import sys
import tempfile

import torch

from pydreamer.evaluation import Request, evaluate
from pydreamer.launching.cli import run_cli
from pydreamer.tracking import setup_tracking


def parse_args(argv: list[str]) -> tuple[Request, int]:
    defaults = Request('', '')
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', required=True,
                        help='Dreamer checkpoint, DQN folder or file, or DQN_modern folder: a path or runs:/<run_id>/<path>')
    parser.add_argument('--env_id', required=True, help='environment to play, e.g. MinAtar/Breakout-v0 or Atari-Pong')
    parser.add_argument('--episodes', type=int, default=defaults.episodes, help='episodes to play (default %(default)s)')
    parser.add_argument('--greedy', action='store_true',
                        help="the actor's most likely action, DQN ε 0 (default: sampled actions, DQN ε 0.01, "
                             'DQN_modern ε 0.001, as the generators play)')
    parser.add_argument('--seed', type=int, default=defaults.seed, help='seed of the environment and the policy')
    parser.add_argument('--time_limit', type=int, default=defaults.time_limit,
                        help='agent steps after which an episode is cut; 0 = none (default %(default)s, the presets\')')
    parser.add_argument('--video_steps', type=int, default=defaults.video_steps,
                        help='at most this many frames of the first episode go into the GIF (default %(default)s)')
    parser.add_argument('--experiment', default=defaults.experiment, help='mlflow experiment (default %(default)s)')
    parser.add_argument('--run_name', default='', help='mlflow run name (default evaluate-<source run name>)')
    parser.add_argument('--run_tags', default='', help='extra mlflow tags as a YAML map, e.g. "{arm: finetune, seed: 1}"')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default %(default)s: one is fastest for one environment)')
    args = vars(parser.parse_args(argv))
    threads = args.pop('threads')
    if args['episodes'] < 1:
        parser.error(f'--episodes is {args["episodes"]}; expected at least 1.')
    return Request(**args), threads


def main(argv: list[str]) -> int:
    request, threads = parse_args(argv)
    torch.set_num_threads(threads)
    uri = setup_tracking()
    with tempfile.TemporaryDirectory(prefix='pydreamer-evaluate-') as tmp:
        run_id, table = evaluate(request, tmp)
    print(table)
    print(f'mlflow run {run_id} in {uri}')
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main, 'evaluate'))
