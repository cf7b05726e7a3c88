"""The transfer experiment in one command: does a world model pretrained on other games help?

    python experiments/transfer.py --scale tiny            # minutes: the README's main job
    python experiments/transfer.py --scale small --seeds 3 # a few hours on a 2-core CPU
    python experiments/transfer.py --scale paper --seeds 3 # the original project's sizes
    python experiments/transfer.py --scale small --data-run <id> --wm-steps 3000 --arm-steps 600 \
        -- --batch_size 16 --batch_length 32             # any size in between

Stages, each an mlflow run tagged `transfer=<id>` and `arm=<name>` (and `seed`):
  1. DQN agents on the four pretraining games (dqn/train_agents.py; finished checkpoints are kept)
  2. `dataset`: the multi-environment dataset of those agents (launch_generator_multi_env.py)
  3. `world_model`: one world model trained on it (launch_wm_training.py)
  4. per seed, on the unseen game with equal learner steps:
       `finetune`               pretrained world model + new actor-critic (launch_finetuning.py)
       `finetune_frozen_rssm`   the same with the RSSM kept fixed
       `scratch`                the classic from-scratch run (launch.py)
  5. figures and a CSV (experiments/plot_transfer.py)
Earlier stages can be reused with --data-run / --wm-run.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydreamer.tracking import client, setup_tracking  # noqa: E402

PRETRAIN_GAMES = ('asterix', 'breakout', 'seaquest', 'freeway')


@dataclass(frozen=True)
class Scale:
    dqn_steps: tuple[int, ...]   # checkpoint steps of each DQN agent (the last is its budget)
    dataset_steps: int           # agent steps in the multi-env dataset
    dataset_prefill: int         # random steps at the start of the dataset
    wm_steps: int                # world-model-only learner steps
    arm_steps: int               # learner steps of every fine-tuning / scratch run
    arm_prefill: int             # random steps before each arm's own actor takes over
    overrides: tuple[str, ...]   # config overrides for every learner stage


SCALES = {
    'tiny': Scale((2_500, 5_000), 20_000, 5_000, 200, 120, 3_000,
                  ('--batch_size', '16', '--batch_length', '32', '--log_interval', '10',
                   '--logbatch_interval', '60', '--save_interval', '60', '--eval_interval', '100')),
    'small': Scale((25_000, 50_000, 100_000, 200_000, 400_000), 400_000, 50_000, 5_000, 2_000, 20_000,
                   ('--log_interval', '50', '--save_interval', '250', '--eval_interval', '500')),
    'paper': Scale((25_000, 50_000, 100_000, 200_000, 400_000, 800_000, 1_600_000), 10_000_000, 100_000,
                   100_000, 20_000, 50_000, ()),
}


def launch(script: str, *args: str) -> None:
    command = [sys.executable, str(ROOT / script), *args]
    print(f'[transfer] $ {" ".join(command[1:])}', flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def run_id_of(transfer: str, arm: str, seed: int | None = None) -> str:
    query = f"tags.transfer = '{transfer}' and tags.arm = '{arm}'"
    if seed is not None:
        query += f" and tags.seed = '{seed}'"
    runs = client().search_runs([e.experiment_id for e in client().search_experiments()], query,
                                order_by=['attributes.start_time DESC'], max_results=1)
    if not runs:
        raise SystemExit(f'[transfer] no run tagged transfer={transfer}, arm={arm} was found.')
    return runs[0].info.run_id


def tags(transfer: str, arm: str, seed: int | None = None) -> list[str]:
    value = f'{{transfer: "{transfer}", arm: {arm}' + (f', seed: {seed}' if seed is not None else '') + '}'
    return ['--run_tags', value, '--run_name', f'{transfer}-{arm}' + (f'-s{seed}' if seed is not None else '')]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--scale', choices=SCALES, default='tiny')
    parser.add_argument('--seeds', type=int, default=1, help='seeds per arm')
    parser.add_argument('--game', default='MinAtar/SpaceInvaders-v0', help='the unseen game')
    parser.add_argument('--arms', nargs='+', default=['finetune', 'finetune_frozen_rssm', 'scratch'],
                        choices=['finetune', 'finetune_frozen_rssm', 'scratch'])
    parser.add_argument('--dqn-out', default=None, help='DQN checkpoint folder (default: dqn_checkpoints_<scale>)')
    parser.add_argument('--data-run', default=None, help='reuse this dataset run (skips stages 1-2)')
    parser.add_argument('--wm-run', default=None, help='reuse this world-model run (skips stages 1-3)')
    parser.add_argument('--wm-steps', type=int, default=None, help="world-model learner steps (default: the scale's)")
    parser.add_argument('--arm-steps', type=int, default=None, help="learner steps of every arm (default: the scale's)")
    parser.add_argument('--out', default=str(ROOT / 'docs'), help='folder for the figure and CSV')
    parser.add_argument('overrides', nargs='*', help='config overrides for every learner stage, after --, '
                        'e.g. -- --batch_size 16 --batch_length 32')
    args = parser.parse_args(argv)
    scale = SCALES[args.scale]
    scale = replace(scale, wm_steps=args.wm_steps or scale.wm_steps, arm_steps=args.arm_steps or scale.arm_steps,
                    overrides=scale.overrides + tuple(args.overrides))
    setup_tracking()
    transfer = f'{args.scale}-{time.strftime("%Y%m%d-%H%M%S")}'
    print(f'[transfer] experiment id {transfer} (mlflow tag transfer={transfer})', flush=True)

    wm_run = args.wm_run
    if wm_run is None:
        data_run = args.data_run
        if data_run is None:
            dqn_out = args.dqn_out or f'dqn_checkpoints_{args.scale}'
            launch('dqn/train_agents.py', '--games', *PRETRAIN_GAMES, '--out', dqn_out,
                   '--checkpoint-steps', *map(str, scale.dqn_steps),
                   '--replay-start', str(min(5_000, scale.dqn_steps[0] // 2)),
                   '--eps-decay-steps', str(min(100_000, scale.dqn_steps[-1] // 2)))
            dqn_dir = '{' + ', '.join(f'MinAtar/{g.title()}-v0: {dqn_out}/{g}' for g in PRETRAIN_GAMES) + '}'
            launch('launch_generator_multi_env.py', '--configs', 'defaults', 'minatar', 'generator_multi_env',
                   '--dqn_dir', dqn_dir, '--n_env_steps', str(scale.dataset_steps),
                   '--generator_prefill_steps', str(scale.dataset_prefill), *tags(transfer, 'dataset'))
            data_run = run_id_of(transfer, 'dataset')
        launch('launch_wm_training.py', '--configs', 'defaults', 'minatar', 'wm_training', '--mlflow_run_id', data_run,
               '--n_steps', str(scale.wm_steps), *scale.overrides, *tags(transfer, 'world_model'))
        wm_run = run_id_of(transfer, 'world_model')

    checkpoint = f'runs:/{wm_run}/checkpoints/latest.pt'
    common = ['--env_id', args.game, '--n_steps', str(scale.arm_steps),
              '--generator_prefill_steps', str(scale.arm_prefill), *scale.overrides]
    for seed in range(args.seeds):
        for arm in args.arms:
            if arm == 'scratch':
                launch('launch.py', '--configs', 'defaults', 'minatar', *common, '--seed', str(seed),
                       *tags(transfer, arm, seed))
            else:
                launch('launch_finetuning.py', '--configs', 'defaults', 'minatar', 'finetune', *common,
                       '--n_steps_wm', str(scale.arm_steps), '--model_checkpoint', checkpoint, '--seed', str(seed),
                       '--freeze_rssm', str(arm == 'finetune_frozen_rssm').lower(), *tags(transfer, arm, seed))

    launch('experiments/plot_transfer.py', '--transfer', transfer, '--out', args.out)


if __name__ == '__main__':
    main(sys.argv[1:])
