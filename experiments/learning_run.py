"""A from-scratch learning run with its curve: launch.py on one game, then plot_learning.py.

    python experiments/learning_run.py --env_id MinAtar/Breakout-v0 --minutes 60
    python experiments/learning_run.py --env_id MinAtar/Breakout-v0 --n_steps 5000 -- --batch_size 16

Runs `launch.py --configs defaults minatar` with a random prefill, the generator rate-limited
to `--ratio` stored steps per learner step (so that the learner, not the generator, has the cores)
and frequent checkpoints (so that the generator plays with a recent actor). Collection is not
handed to an untrained actor: the generator keeps the random policy until the learner's checkpoint
is `--policy-start` steps far (the original fork's first policy checkpoint came at 500), or later
when the preset warms the actor up for longer (`actor_warmup_steps`). It stops at `--n_steps`
learner steps or after `--minutes` (the launcher gets SIGTERM, which it handles like Ctrl-C:
its processes stop cleanly; SIGINT would be ignored when this script runs in the background), then writes `docs/learning_<run name>.png` and `.csv`. Arguments after `--` are
further config overrides for launch.py.
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from experiments import plot_learning


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--env_id', default='MinAtar/Breakout-v0')
    parser.add_argument('--configs', nargs='+', default=['defaults', 'minatar'])
    parser.add_argument('--n_steps', type=int, default=100_000, help='learner steps')
    parser.add_argument('--minutes', type=float, default=0, help='wall-clock budget; 0 = until n_steps')
    parser.add_argument('--prefill', type=int, default=10_000, help='random-policy agent steps first')
    parser.add_argument('--policy-start', type=int, default=500,
                        help='learner step of the first checkpoint whose actor collects data')
    parser.add_argument('--ratio', type=float, default=20, help='stored agent steps per learner step at most')
    parser.add_argument('--run_name', default=None)
    parser.add_argument('--out', default=str(ROOT / 'docs'))
    parser.add_argument('overrides', nargs='*', help='config overrides for launch.py, after --')
    args = parser.parse_args(argv)
    name = args.run_name or f'learning-{args.env_id.split("/")[-1].split("-")[0].lower()}-{time.strftime("%Y%m%d-%H%M%S")}'
    command = [sys.executable, str(ROOT / 'launch.py'), '--configs', *args.configs, '--env_id', args.env_id,
               '--n_steps', str(args.n_steps), '--generator_prefill_steps', str(args.prefill),
               '--limit_step_ratio', str(args.ratio), '--policy_start_step', str(args.policy_start),
               '--save_interval', '100', '--log_interval', '10',
               '--run_name', name, *args.overrides]
    print(f'[learning_run] $ {" ".join(command[1:])}', flush=True)
    launcher = subprocess.Popen(command)
    try:
        code = launcher.wait(timeout=args.minutes * 60 if args.minutes > 0 else None)
    except subprocess.TimeoutExpired:
        print(f'[learning_run] {args.minutes:g} minutes are up: stopping the run.', flush=True)
        launcher.send_signal(signal.SIGTERM)
        code = launcher.wait()
    if code not in (0, 130):
        return code
    plot_learning.main(['--run', name, '--out', args.out])
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
