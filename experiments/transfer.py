"""The transfer experiment in one command: does a world model pretrained on other games help?

    python experiments/transfer.py --scale tiny                        # minutes: the README's main job
    python experiments/transfer.py --scale cpu --target Breakout --seeds 3   # ~2.5 h on a 2-core CPU
    python experiments/transfer.py --scale paper --seeds 3             # the original project's sizes
    python experiments/transfer.py --scale small --data-run <id> --wm-steps 3000 --arm-steps 600 \
        -- --batch_size 16 --batch_length 32                         # any size in between

Leave-one-out: the unseen `--target` game (default SpaceInvaders, the original's choice) is left
out and the other four MinAtar games form the pretraining dataset. Stages, each an mlflow run,
all children (`mlflow.parentRunId`) of one parent run named `transfer-<name>` that holds the
figure and CSV; every run is tagged `transfer=<name>`, `arm` and, per seed, `seed`:
  1. DQN agents on the four pretraining games (dqn/train_agents.py; finished checkpoints are kept)
  2. `dataset`: the multi-environment dataset of those agents (launch_generator_multi_env.py)
  3. `world_model`: one world model trained on it (launch_wm_training.py)
  4. per seed, on the unseen game with equal learner steps:
       `finetune`               pretrained world model + new actor-critic (launch_finetuning.py)
       `finetune_frozen_rssm`   the same with the RSSM kept fixed
       `scratch`                the classic from-scratch run (launch.py)
     and each arm's final actor plays `final_episodes` episodes (evaluate.py, run `evaluate_<arm>`),
     whose mean is logged into the arm's run as `final/return`
  5. figures, a CSV and a table (experiments/plot_transfer.py)
Running the same command again (same --name, by default `<scale>-<target>`) reuses the finished
stages and resumes an interrupted one where it stopped. Earlier stages can also be taken from
another experiment with --data-run / --wm-run.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from pydreamer import envs
from pydreamer.envs import MINATAR_GAMES, minatar_module as folder_name
from pydreamer.tracking import MetricsLogger, client, describe_run, experiment_id, setup_tracking

ARMS = ('finetune', 'finetune_frozen_rssm', 'scratch')


@dataclass(frozen=True)
class Scale:
    dqn_steps: tuple[int, ...]   # checkpoint steps of each DQN agent (the last is its budget)
    dataset_steps: int           # agent steps in the multi-env dataset
    dataset_prefill: int         # random steps at the start of the dataset
    wm_steps: int                # world-model-only learner steps
    arm_steps: int               # learner steps of every fine-tuning / scratch run
    arm_prefill: int             # random steps before each arm's own actor takes over
    configs: tuple[str, ...]     # config sections of every learner stage
    overrides: tuple[str, ...]   # config overrides for every learner stage
    final_episodes: int = 20     # episodes of each arm's final actor (final/return)


SCALES = {
    # checkpoints every 20 steps, checked for every 10 s: the arms' actors change while they play
    'tiny': Scale((2_500, 5_000), 20_000, 5_000, 200, 120, 3_000, ('defaults', 'minatar'),
                  ('--batch_size', '16', '--batch_length', '32', '--log_interval', '10',
                   '--logbatch_interval', '60', '--save_interval', '20', '--policy_reload_interval', '10',
                   '--eval_interval', '100'), final_episodes=10),
    # sized for a 2-core CPU (~2.5 h with 3 seeds): minatar_cpu at cnn_depth 16, and arms whose
    # generator is rate-limited to 20 stored steps per learner step, so the learner has both cores
    'cpu': Scale((25_000, 50_000, 100_000), 150_000, 15_000, 1_500, 1_000, 10_000,
                 ('defaults', 'minatar', 'minatar_cpu'),
                 ('--cnn_depth', '16', '--log_interval', '25', '--save_interval', '100', '--eval_interval', '100',
                  '--limit_step_ratio', '20')),
    'small': Scale((25_000, 50_000, 100_000, 200_000, 400_000), 400_000, 50_000, 5_000, 2_000, 20_000,
                   ('defaults', 'minatar'), ('--log_interval', '50', '--save_interval', '250', '--eval_interval', '500')),
    'paper': Scale((25_000, 50_000, 100_000, 200_000, 400_000, 800_000, 1_600_000), 10_000_000, 100_000,
                   100_000, 20_000, 50_000, ('defaults', 'minatar'), ()),
}


def minatar_game(name: str) -> str:
    """The game that --target names, or exit with one sentence."""
    try:
        return envs.minatar_game(name)
    except envs.EnvError:
        raise SystemExit(f'[transfer] --target {name!r} is not a MinAtar game; expected one of '
                         f'{", ".join(envs.MINATAR_GAMES)}.') from None


def launch(script: str, *args: str) -> None:
    command = [sys.executable, str(ROOT / script), *args]
    print(f'[transfer] $ {" ".join(command[1:])}', flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def find_run(transfer: str, arm: str, seed: int | None = None):
    """The newest run of this experiment's `arm` (and seed), or None."""
    query = f"tags.transfer = '{transfer}' and tags.arm = '{arm}'"
    if seed is not None:
        query += f" and tags.seed = '{seed}'"
    runs = client().search_runs([e.experiment_id for e in client().search_experiments()], query,
                                order_by=['attributes.start_time DESC'], max_results=1)
    return runs[0] if runs else None


class Experiment:
    """The parent run and the stages under it: each stage is skipped when finished, resumed when
    interrupted, and started otherwise."""

    def __init__(self, name: str):
        self.name = name
        run = find_run(name, 'parent')
        c = client()
        if run is None:
            run = c.create_run(experiment_id('pydreamer'), run_name=f'transfer-{name}',
                               tags={'transfer': name, 'arm': 'parent', 'stage': 'transfer'})
            print(f'[transfer] experiment {name}: parent run {run.info.run_id}', flush=True)
        else:
            c.update_run(run.info.run_id, status='RUNNING')
            print(f'[transfer] experiment {name}: continuing parent run {run.info.run_id}', flush=True)
        self.parent = run.info.run_id

    def tags(self, arm: str, seed: int | None = None) -> str:
        """The --run_tags of a child run: the experiment, the arm, the seed and the parent."""
        tags = f'transfer: "{self.name}", arm: {arm}, mlflow.parentRunId: {self.parent}'
        return '{' + tags + (f', seed: {seed}' if seed is not None else '') + '}'

    def stage(self, script: str, arm: str, args: list[str], seed: int | None = None) -> str:
        """Run `script` for `arm` unless a finished run of it exists; returns the run id."""
        run = find_run(self.name, arm, seed)
        if run is not None and run.info.status == 'FINISHED':
            print(f'[transfer] {arm}{"" if seed is None else f" seed {seed}"}: finished run {run.info.run_id} is reused',
                  flush=True)
            return run.info.run_id
        name = f'{arm}{"" if seed is None else f"-s{seed}"}-{self.name}'  # what differs comes first
        resume = ['--resume_id', run.info.run_id] if run is not None else []
        launch(script, *args, '--run_tags', self.tags(arm, seed), '--run_name', name, *resume)
        return find_run(self.name, arm, seed).info.run_id

    def final_return(self, arm_run: str, arm: str, seed: int, env_id: str, episodes: int) -> None:
        """Play the arm's final actor (evaluate.py, a child run of its own) and log its mean return as
        the arm's `final/return`, at the learner step of that checkpoint; done once per arm run."""
        if 'final/return' in client().get_run(arm_run).data.metrics:
            return
        name = f'evaluate_{arm}'
        launch('evaluate.py', '--checkpoint', f'runs:/{arm_run}/checkpoints/latest.pt', '--env_id', env_id,
               '--episodes', str(episodes), '--seed', str(seed), '--run_tags', self.tags(name, seed),
               '--run_name', f'{name}-s{seed}-{self.name}')
        evaluation = find_run(self.name, name, seed)
        metrics = evaluation.data.metrics
        step = int(evaluation.data.tags.get('checkpoint_step', 0))
        MetricsLogger(arm_run).log({'final/return': metrics['eval/return'],
                                    'final/return_stderr': metrics['eval/return_stderr']}, step)
        describe_run(arm_run)

    def finish(self, out: Path) -> None:
        c = client()
        for path in sorted(out.glob(f'transfer_{self.name}.*')):
            c.log_artifact(self.parent, str(path))
        c.set_terminated(self.parent, 'FINISHED')


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--scale', choices=SCALES, default='tiny')
    parser.add_argument('--seeds', type=int, default=1, help='seeds per arm')
    parser.add_argument('--target', default='SpaceInvaders',
                        help='the unseen game; the other four MinAtar games form the dataset')
    parser.add_argument('--name', default=None, help='experiment name (mlflow tag transfer=...); '
                        'default <scale>-<target>. The same name continues that experiment')
    parser.add_argument('--arms', nargs='+', default=list(ARMS), choices=ARMS)
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
    target = minatar_game(args.target)
    pretrain = [g for g in MINATAR_GAMES if g != target]
    setup_tracking()
    experiment = Experiment(args.name or f'{args.scale}-{folder_name(target)}')

    wm_run = args.wm_run
    if wm_run is None:
        data_run = args.data_run
        if data_run is None:
            dqn_out = args.dqn_out or f'dqn_checkpoints_{args.scale}'
            launch('dqn/train_agents.py', '--games', *map(folder_name, pretrain), '--out', dqn_out,
                   '--run-name', f'dqn-{experiment.name}', '--run-tags', experiment.tags('dqn'),
                   '--checkpoint-steps', *map(str, scale.dqn_steps),
                   '--replay-start', str(min(5_000, scale.dqn_steps[0] // 2)),
                   '--eps-decay-steps', str(min(100_000, scale.dqn_steps[-1] // 2)))
            env_ids = [f'MinAtar/{g}-v0' for g in pretrain]
            dqn_dir = '{' + ', '.join(f'{e}: {dqn_out}/{folder_name(g)}' for e, g in zip(env_ids, pretrain)) + '}'
            data_run = experiment.stage('launch_generator_multi_env.py', 'dataset', [
                '--configs', 'defaults', 'minatar', 'generator_multi_env', '--env_id', f'[{", ".join(env_ids)}]',
                '--dqn_dir', dqn_dir, '--n_env_steps', str(scale.dataset_steps),
                '--generator_prefill_steps', str(scale.dataset_prefill)])
        wm_run = experiment.stage('launch_wm_training.py', 'world_model', [
            '--configs', *scale.configs, 'wm_training', '--mlflow_run_id', data_run,
            '--n_steps', str(scale.wm_steps), *scale.overrides])

    checkpoint = f'runs:/{wm_run}/checkpoints/latest.pt'
    common = ['--env_id', f'MinAtar/{target}-v0', '--n_steps', str(scale.arm_steps),
              '--generator_prefill_steps', str(scale.arm_prefill), *scale.overrides]
    for seed in range(args.seeds):
        for arm in args.arms:
            if arm == 'scratch':
                run = experiment.stage('launch.py', arm, ['--configs', *scale.configs, *common, '--seed', str(seed)], seed)
            else:
                run = experiment.stage('launch_finetuning.py', arm, [
                    '--configs', *scale.configs, 'finetune', *common, '--n_steps_wm', str(scale.arm_steps),
                    '--model_checkpoint', checkpoint, '--seed', str(seed),
                    '--freeze_rssm', str(arm == 'finetune_frozen_rssm').lower()], seed)
            experiment.final_return(run, arm, seed, f'MinAtar/{target}-v0', scale.final_episodes)

    launch('experiments/plot_transfer.py', '--transfer', experiment.name, '--out', args.out)
    experiment.finish(Path(args.out))


if __name__ == '__main__':
    main(sys.argv[1:])
