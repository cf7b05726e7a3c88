"""Train one DQN agent per MinAtar game and save checkpoints at several skill levels.

    python dqn/train_agents.py                                  # the four default games
    python dqn/train_agents.py --games breakout --checkpoint-steps 25000 50000 --threads 1

The algorithm and hyper-parameters are those of MinAtar's reference DQN (Young & Tian 2019,
examples/dqn.py): replay 100k, batch 32, one update per step after 5k random steps, target
network copied every 1000 updates, ε annealed 1 → 0.1 over the 100k steps after replay start,
centred RMSprop, γ 0.99, Huber loss. The environment is `minatar.Environment(game)` with its
defaults (sticky actions 0.1, difficulty ramping) and the full 6-action set.

Output, per game: `<out>/<game>/model_<step>.pt` (plain state dicts of the online Q-network, read
by `dqn.policy.DQNPolicy`) and `scores.csv` (evaluation return of each checkpoint, near-greedy with ε 0.01,
and of a uniformly random policy measured with the same code). Files are written atomically and never
overwritten: a game whose final checkpoint exists is skipped; a game whose run was interrupted is
trained again from scratch and only the missing checkpoints are written.

The stage is an mlflow run (tag stage: dqn) with the flags as params; each checkpoint's evaluation
as `eval/<game>/return` (and `_std`) at its environment step, the random policy's as
`eval/<game>/return_random`; training progress as `agent/<game>/return` and `train/<game>/loss`;
and the files of each game folder (also those kept from an earlier run) as artifacts `<game>/...`,
so that `dqn_dir` can name `runs:/<run_id>/<game>` instead of the local folder.
"""
from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import io
import logging
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import minatar
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dqn.networks import ARCHITECTURES, build_q_network
from dqn.policy import N_ACTIONS, DQNPolicy
from pydreamer.atomic import atomic_write
from pydreamer.averages import every
from pydreamer.config import ConfigError
from pydreamer.envs import MINATAR_GAMES, EnvError, minatar_game, minatar_module
from pydreamer.launching.cli import run_cli
from pydreamer.tracking import parse_tags

PROJECT_ROOT = Path(__file__).resolve().parent.parent
GAMES = tuple(minatar_module(game) for game in MINATAR_GAMES)  # the folder names, as minatar calls them

logger = logging.getLogger('dqn')


def _flag(default, help: str):
    return field(default=default, metadata={'help': help})


@dataclass(frozen=True)
class TrainConfig:
    games: tuple[str, ...] = _flag(('asterix', 'breakout', 'seaquest', 'freeway'),
                                   'MinAtar games (asterix, breakout, freeway, seaquest, space_invaders; '
                                   'SpaceInvaders and MinAtar/Breakout-v0 forms are accepted)')
    checkpoint_steps: tuple[int, ...] = _flag(
        (25_000, 50_000, 100_000, 200_000, 400_000, 800_000, 1_600_000),
        'environment steps at which checkpoints are saved; the last one ends training. The default '
        'doubles from 25k to 1.6M: early, weak agents plus ~1 h per game at ~450 steps/s on one thread')
    out: Path = _flag(Path('dqn_checkpoints'), 'output folder (a relative path is taken from the project '
                      'root); one sub-folder per game')
    seed: int = _flag(0, 'seed of torch, the environment, exploration and replay sampling')
    arch: str = _flag('conv', 'Q-network: conv (MinAtar reference) or mlp (the original project\'s agents)')
    threads: int = _flag(1, 'torch threads; one is fastest for these tiny networks')
    replay_size: int = _flag(100_000, 'replay buffer capacity (transitions)')
    replay_start: int = _flag(5_000, 'uniformly random steps before learning starts')
    batch_size: int = _flag(32, 'transitions per update; one update per environment step')
    target_update: int = _flag(1_000, 'updates between copies of the online network to the target network')
    eps_end: float = _flag(0.1, 'final exploration ε, reached eps_decay_steps after replay start (from 1.0)')
    eps_decay_steps: int = _flag(100_000, 'steps over which ε is annealed linearly')
    lr: float = _flag(2.5e-4, 'RMSprop learning rate')
    rms_alpha: float = _flag(0.95, 'RMSprop decay of the squared- and mean-gradient averages')
    rms_eps: float = _flag(0.01, 'RMSprop ε added to the root (MinAtar\'s "minimum squared gradient")')
    gamma: float = _flag(0.99, 'discount')
    eval_episodes: int = _flag(10, 'evaluation episodes at each checkpoint')
    eval_epsilon: float = _flag(0.01, 'ε of the evaluation policy (DQNPolicy\'s default); sticky actions stay on')
    eval_max_steps: int = _flag(27_000, 'an evaluation episode is cut after this many steps')
    log_interval: int = _flag(25_000, 'steps between progress log lines (and train/agent metrics)')
    experiment: str = _flag('pydreamer', 'mlflow experiment of the stage\'s run')
    run_name: str = _flag('', 'mlflow run name (default dqn-s<seed>-<games>)')
    run_tags: str = _flag('', 'extra mlflow tags of the run as a YAML map, e.g. "{transfer: x, arm: dqn}"')


def game_module(name: str) -> str:
    """MinAtar's module name (`space_invaders`) for `space_invaders`, `SpaceInvaders` or `MinAtar/SpaceInvaders-v0`."""
    try:
        return minatar_module(minatar_game(name))
    except EnvError:
        raise ConfigError(f'Unknown MinAtar game {name!r}; expected one of {", ".join(GAMES)}.') from None


def output_root(config: TrainConfig) -> Path:
    return config.out if config.out.is_absolute() else PROJECT_ROOT / config.out


def check_config(config: TrainConfig) -> None:
    steps = config.checkpoint_steps
    if not steps or any(s <= 0 for s in steps) or list(steps) != sorted(set(steps)):
        raise ConfigError(f'checkpoint_steps must be increasing positive step counts, got {list(steps)}.')
    if config.arch not in ARCHITECTURES:
        raise ConfigError(f'Unknown arch {config.arch!r}; expected one of {sorted(ARCHITECTURES)}.')
    if config.batch_size > config.replay_start:
        raise ConfigError(f'replay_start ({config.replay_start}) must be at least batch_size ({config.batch_size}).')
    parse_tags(config.run_tags, '--run-tags')



class ReplayBuffer:
    """A circular buffer of transitions (s, a, r, s', terminal) with raw (10, 10, C) bool observations."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...]):
        self.obs = np.zeros((capacity, *obs_shape), dtype=bool)
        self.next_obs = np.zeros((capacity, *obs_shape), dtype=bool)
        self.action = np.zeros(capacity, dtype=np.int64)
        self.reward = np.zeros(capacity, dtype=np.float32)
        self.terminal = np.zeros(capacity, dtype=np.float32)
        self.capacity = capacity
        self.size = 0
        self._next = 0

    def add(self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminal: bool) -> None:
        i = self._next
        self.obs[i], self.action[i], self.reward[i] = obs, action, reward
        self.next_obs[i], self.terminal[i] = next_obs, terminal
        self._next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        # Uniform with replacement; MinAtar samples without, which differs negligibly at 32 of >= 5000.
        idx = rng.integers(self.size, size=batch_size)
        return {'obs': torch.from_numpy(self.obs[idx]), 'action': torch.from_numpy(self.action[idx]),
                'reward': torch.from_numpy(self.reward[idx]), 'next_obs': torch.from_numpy(self.next_obs[idx]),
                'terminal': torch.from_numpy(self.terminal[idx])}


def td_target(reward: torch.Tensor, terminal: torch.Tensor, next_q: torch.Tensor, gamma: float) -> torch.Tensor:
    """One-step Q-learning target r + γ·(1 − terminal)·max_a' Q_target(s', a'); all (B,) except next_q (B, A)."""
    return reward + gamma * (1.0 - terminal) * next_q.max(1).values


def td_loss(q_net: torch.nn.Module, target_net: torch.nn.Module, batch: dict[str, torch.Tensor],
            gamma: float) -> torch.Tensor:
    """Huber (smooth L1) loss between Q(s, a) and the target network's one-step target."""
    q = q_net(batch['obs']).gather(1, batch['action'][:, None])[:, 0]  # (B,)
    with torch.no_grad():
        target = td_target(batch['reward'], batch['terminal'], target_net(batch['next_obs']), gamma)
    return F.smooth_l1_loss(q, target)


def epsilon_at(step: int, config: TrainConfig) -> float:
    """ε for the `step`-th environment step: 1 during replay start, then linear down to eps_end."""
    progress = min(max(step - config.replay_start, 0) / config.eps_decay_steps, 1.0)
    return 1.0 + progress * (config.eps_end - 1.0)


def make_optimizer(q_net: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # MinAtar's centred RMSprop. The DQN paper's "gradient momentum 0.95" is the decay of the
    # centred mean gradient (alpha here), not heavy-ball momentum (kenjyoung/MinAtar PR #37).
    return torch.optim.RMSprop(q_net.parameters(), lr=config.lr, alpha=config.rms_alpha,
                               eps=config.rms_eps, centered=True)


def evaluate(policy: Callable[[dict], tuple[int, dict]], game: str, episodes: int, seed: int,
             max_steps: int) -> list[float]:
    """Returns of `episodes` episodes of a policy on `minatar.Environment(game)` (sticky actions on)."""
    env = minatar.Environment(game)
    env.seed(seed)
    returns = []
    for _ in range(episodes):
        env.reset()
        total, reset = 0.0, True
        for _ in range(max_steps):
            action, _ = policy({'minatar_state': env.state(), 'reset': reset})
            reward, terminal = env.act(action)
            total, reset = total + reward, False
            if terminal:
                break
        returns.append(total)
    return returns


def random_policy(seed: int) -> Callable[[dict], tuple[int, dict]]:
    rng = np.random.default_rng(seed)
    return lambda obs: (int(rng.integers(N_ACTIONS)), {})


class ScoreTable:
    """`scores.csv` of a game folder: one evaluation row per policy (the random baseline, each checkpoint)."""

    FIELDS = ('step', 'policy', 'eval_return', 'eval_std', 'episodes')

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, dict] = {}
        if path.exists():
            with open(path, newline='') as f:
                rows = list(csv.DictReader(f))
            # Rows of checkpoints deleted since are dropped so each row describes a file present.
            self.rows = {row['policy']: row for row in rows
                         if row['policy'] == 'random' or (path.parent / row['policy']).exists()}

    def add(self, step: int, policy: str, returns: list[float]) -> None:
        self.rows[policy] = {'step': step, 'policy': policy, 'eval_return': f'{np.mean(returns):.3f}',
                             'eval_std': f'{np.std(returns):.3f}', 'episodes': len(returns)}
        text = io.StringIO(newline='')
        writer = csv.DictWriter(text, fieldnames=self.FIELDS)
        writer.writeheader()
        writer.writerows(sorted(self.rows.values(), key=lambda row: int(row['step'])))
        with atomic_write(self.path) as f:
            f.write(text.getvalue().encode())


class StageRun:
    """The stage's mlflow run: the flags as params, evaluations and progress as metrics, the game
    folders' files as artifacts `<game>/<file>` (module docstring)."""

    def __init__(self, config: TrainConfig, games: list[str]):
        from pydreamer.artifacts import ArtifactFolder
        from pydreamer.tracking import MetricsLogger, client, experiment_id, log_params
        tags = {'stage': 'dqn', 'arm': 'dqn', 'game': ','.join(games), 'seed': str(config.seed),
                'dqn_out': str(output_root(config)), **parse_tags(config.run_tags, '--run-tags')}
        run = client().create_run(experiment_id(config.experiment), run_name=config.run_name or f'dqn-s{config.seed}-{"-".join(games)}',
                                  tags=tags)
        self.run_id = run.info.run_id
        log_params(self.run_id, dataclasses.asdict(config))
        self.metrics = MetricsLogger(self.run_id)
        self.folder = ArtifactFolder(self.run_id)
        logger.info('mlflow run %s (%s).', self.run_id, run.info.run_name)

    def publish(self, game: str, scores: ScoreTable, policy: str) -> None:
        """Log the evaluation of `policy` ('random' or a checkpoint's file name) when scores.csv has
        one, and upload the checkpoint and scores.csv."""
        row = scores.rows.get(policy)
        if row and policy == 'random':
            self.metrics.log({f'eval/{game}/return_random': float(row['eval_return'])}, 0)
        elif row:
            self.metrics.log({f'eval/{game}/return': float(row['eval_return']),
                              f'eval/{game}/return_std': float(row['eval_std'])}, int(row['step']))
        if policy != 'random':
            self.folder.upload_file(scores.path.parent / policy, game)
        self.folder.upload_file(scores.path, game)

    def end(self, status: str) -> None:
        from pydreamer.tracking import end_run
        end_run(self.run_id, status)


def train_game(game: str, config: TrainConfig, game_dir: Path, run: StageRun | None = None) -> list[Path]:
    """Train one agent on `game`, saving `model_<step>.pt` at each checkpoint step; returns their paths."""
    prefix = f'[dqn {game}]'
    steps = config.checkpoint_steps
    paths = {step: game_dir / f'model_{step}.pt' for step in steps}
    eval_seed = config.seed + 10_000  # the same evaluation episodes' randomness for every checkpoint
    scores = _start_game(game, config, game_dir, paths, run, eval_seed, prefix)
    if scores is None:
        return list(paths.values())

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    env = minatar.Environment(game)
    env.seed(config.seed)
    env.reset()
    obs = env.state()
    q_net = build_q_network(config.arch, obs.shape[2], N_ACTIONS)
    target_net = copy.deepcopy(q_net)
    optimizer = make_optimizer(q_net, config)
    replay = ReplayBuffer(config.replay_size, obs.shape)

    episode_return, recent_returns, recent_losses = 0.0, deque(maxlen=50), deque(maxlen=1000)
    updates, start = 0, time.time()
    last_log_step, last_log_time = 0, start
    bar = tqdm(total=steps[-1], desc=f'dqn {game}', unit='step', dynamic_ncols=True,
               mininterval=1 if sys.stderr.isatty() else 60)  # a log file gets a bar line a minute
    for step in range(1, steps[-1] + 1):
        bar.update()
        epsilon = epsilon_at(step, config)
        if rng.random() < epsilon:
            action = int(rng.integers(N_ACTIONS))
        else:
            with torch.inference_mode():
                action = int(q_net(torch.from_numpy(obs)[None]).argmax(1))
        reward, terminal = env.act(action)
        next_obs = env.state()
        replay.add(obs, action, reward, next_obs, terminal)
        episode_return += reward
        if terminal:
            recent_returns.append(episode_return)
            episode_return = 0.0
            env.reset()
            next_obs = env.state()
        obs = next_obs

        if step > config.replay_start:
            loss = td_loss(q_net, target_net, replay.sample(config.batch_size, rng), config.gamma)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            recent_losses.append(loss.item())
            updates += 1
            if updates % config.target_update == 0:
                target_net.load_state_dict(q_net.state_dict())

        if every(step, config.log_interval) or step in paths:
            fps = (step - last_log_step) / (time.time() - last_log_time)
            _report(game, step, recent_returns, recent_losses, epsilon, fps, bar, run, prefix)
            if step in paths:
                save_checkpoint(q_net, paths[step], step, game, config, scores, eval_seed, prefix)
                if run:
                    run.publish(game, scores, paths[step].name)
            last_log_step, last_log_time = step, time.time()  # evaluation time is not training speed
    bar.close()
    logger.info('%s done: %d steps in %.0f s.', prefix, steps[-1], time.time() - start)
    return list(paths.values())


def _start_game(game: str, config: TrainConfig, game_dir: Path, paths: dict[int, Path], run: StageRun | None,
                eval_seed: int, prefix: str) -> ScoreTable | None:
    """The game's score table, with the random policy's row, for a game to train; None for a game
    whose final checkpoint exists (its files are published again)."""
    if paths[max(paths)].exists():
        logger.info('%s final checkpoint %s exists; skipping this game.', prefix, paths[max(paths)])
        if run:
            scores = ScoreTable(game_dir / 'scores.csv')
            for policy in ['random'] + [p.name for p in paths.values() if p.exists()]:
                run.publish(game, scores, policy)
        return None
    kept = [p.name for p in paths.values() if p.exists()]
    if kept:
        logger.info('%s the previous run was interrupted: training again from scratch; existing %s are kept '
                    'and not overwritten.', prefix, ', '.join(kept))
    game_dir.mkdir(parents=True, exist_ok=True)
    scores = ScoreTable(game_dir / 'scores.csv')
    if 'random' not in scores.rows:
        returns = evaluate(random_policy(eval_seed), game, config.eval_episodes, eval_seed, config.eval_max_steps)
        scores.add(0, 'random', returns)
        logger.info('%s random policy: eval return %.2f ± %.2f over %d episodes', prefix,
                    np.mean(returns), np.std(returns), len(returns))
    if run:
        run.publish(game, scores, 'random')
    return scores


def _report(game: str, step: int, returns: deque, losses: deque, epsilon: float, fps: float, bar: tqdm,
            run: StageRun | None, prefix: str) -> None:
    """Progress over the recent episodes and updates: the bar, a log line, and agent/train metrics."""
    recent = np.mean(returns) if returns else float('nan')
    bar.set_postfix(ret=f'{recent:.2f}', eps=f'{epsilon:.2f}', refresh=False)
    loss_text = f'{np.mean(losses):.4f}' if losses else '- (learning not started)'
    logger.info('%s step %d: return %.2f (last %d episodes), loss %s, ε %.2f, %.0f steps/s',
                prefix, step, recent, len(returns), loss_text, epsilon, fps)
    if run:
        run.metrics.log({f'agent/{game}/return': recent, f'agent/{game}/epsilon': epsilon,
                         f'train/{game}/loss': np.mean(losses) if losses else None,
                         f'train/{game}/fps': fps}, step)  # None and nan are not sent


def save_checkpoint(q_net: torch.nn.Module, path: Path, step: int, game: str, config: TrainConfig,
                    scores: ScoreTable, eval_seed: int, prefix: str) -> None:
    """Save the online network (unless the file exists) and log its evaluation through DQNPolicy."""
    if path.exists():
        logger.info('%s %s exists from an earlier run; not overwritten, not evaluated.', prefix, path.name)
        return
    with atomic_write(path) as f:  # readers glob model_*.pt and never see a partial file
        torch.save(q_net.state_dict(), f)
    policy = DQNPolicy(path, N_ACTIONS, epsilon=config.eval_epsilon, seed=eval_seed)
    returns = evaluate(policy, game, config.eval_episodes, eval_seed, config.eval_max_steps)
    scores.add(step, path.name, returns)
    logger.info('%s saved %s; eval return %.2f ± %.2f over %d episodes (ε %.2g)', prefix, path,
                np.mean(returns), np.std(returns), len(returns), config.eval_epsilon)


def train(config: TrainConfig, run: StageRun | None = None) -> list[Path]:
    """Train every game of the config in turn (recording into `run` when given); returns all
    checkpoint paths of the schedule, game by game."""
    check_config(config)
    games = [game_module(name) for name in config.games]
    torch.set_num_threads(config.threads)
    root = output_root(config)
    paths = []
    for game in games:
        paths.extend(train_game(game, config, root / game, run))
    return paths


def parse_args(argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        flag = '--' + f.name.replace('_', '-')
        if isinstance(f.default, tuple):
            parser.add_argument(flag, nargs='+', type=type(f.default[0]), default=f.default, help=f.metadata['help'])
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default, help=f.metadata['help'])
    args = vars(parser.parse_args(argv))
    return TrainConfig(**{key: tuple(v) if isinstance(v, list) else v for key, v in args.items()})


def main(argv: list[str]) -> int:
    """The stage as one mlflow run; a bad flag stops it before the run is created."""
    from pydreamer.tracking import setup_tracking
    config = parse_args(argv)
    check_config(config)
    setup_tracking()
    run = StageRun(config, [game_module(name) for name in config.games])
    status = 'FAILED'
    try:
        with logging_redirect_tqdm():
            train(config, run)
        status = 'FINISHED'
    except KeyboardInterrupt:
        status = 'KILLED'
        raise
    finally:
        run.end(status)
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main, 'dqn'))
