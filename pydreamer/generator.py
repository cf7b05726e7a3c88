"""Generator process: plays episodes and stores them as episode files in the run's artifact folders.

Worker `w` writes `episodes/<w>/` and, for `split_fraction` of its files, `episodes_eval/<w>/`.
It plays with the prefill policy until its share of `generator_prefill_steps` is stored, then
switches to `policy_main` at the next episode boundary, and stops at its share of `n_env_steps`.
With several env ids it always plays the game with the fewest steps collected so far, and
every step records `env_id` (the index into the env list). Re-running on the same run resumes:
episode numbering and step counts continue from the files already stored.
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pydreamer.artifacts import ArtifactFolder
from pydreamer.averages import Averages
from pydreamer.config import Config
from pydreamer.envs import Env, env_id_list, make_env
from pydreamer.episodes import EpisodeChunker, EpisodeFile, first_row, next_row, resume_point, save_episode
from pydreamer.launching.processes import stop_requested
from pydreamer.network_policy import NetworkPolicy
from pydreamer.policies import make_policy
from pydreamer.tracking import MetricsLogger

log = logging.getLogger(__name__)


def worker_share(total: int, workers: int, worker: int) -> int:
    """This worker's part of a total split evenly over all workers (the first ones take the remainder)."""
    return total // workers + (1 if worker < total % workers else 0)


class EpisodeWriter:
    """Uploads chunker output to the train or eval folder of one worker."""

    def __init__(self, run_id: str, worker: int, split_fraction: float, rng: np.random.Generator):
        self.train = ArtifactFolder(run_id, f'episodes/{worker}')
        self.eval = ArtifactFolder(run_id, f'episodes_eval/{worker}')
        self.split_fraction = split_fraction
        self.rng = rng
        self._tmp = tempfile.TemporaryDirectory(prefix='pydreamer-episodes-')

    def existing(self) -> list[EpisodeFile]:
        return [f for _, f in self.train.list() + self.eval.list()]

    def write(self, files: list[tuple[EpisodeFile, dict]]) -> None:
        for name, data in files:
            path = Path(self._tmp.name) / name.name
            save_episode(path, data)
            folder = self.eval if self.rng.random() < self.split_fraction else self.train
            folder.upload(path)
            path.unlink()

    def close(self) -> None:
        self._tmp.cleanup()


def run(conf: Config, run_id: str, worker: int) -> None:
    env_ids = env_id_list(conf.env_id)
    workers = conf.generator_workers
    target_steps = worker_share(conf.n_env_steps, workers, worker)
    prefill_steps = worker_share(conf.generator_prefill_steps, workers, worker)
    rng = np.random.default_rng(conf.seed * 1000 + worker)

    writer = EpisodeWriter(run_id, worker, conf.split_fraction, rng)
    episode, steps = resume_point(writer.existing())
    if steps >= target_steps:
        log.info('Worker %d already stored %d of its %d steps; nothing to do.', worker, steps, target_steps)
        writer.close()
        return
    if steps:
        log.info('Resuming worker %d at episode %d with %d steps stored.', worker, episode, steps)

    games = _Games(conf, run_id, env_ids, worker, rng)
    steps_per_game: dict[int, int] = defaultdict(int)
    chunker = EpisodeChunker(conf.file_min_steps)
    metrics = MetricsLogger(run_id)
    pending: list[tuple[dict, int]] = []
    last_send = time.time()
    bar = tqdm(total=target_steps, initial=steps, desc=f'generator-{worker}', unit='step',
               mininterval=2.0, position=worker, leave=False)
    try:
        while steps < target_steps and not stop_requested():
            game = min(range(len(env_ids)), key=lambda g: steps_per_game[g])
            env = games.env(game)
            policy_name = conf.generator_prefill_policy if steps < prefill_steps else conf.policy_main
            policy = games.policy(policy_name, game)
            if isinstance(policy, NetworkPolicy) and policy.loaded_step is None:
                writer.write(chunker.flush())  # the learner may be waiting for exactly these rows
                _send(metrics, pending)
                if not policy.wait_for_checkpoint():
                    break
            episode_start = time.time()
            ep_return, ep_steps, policy_metrics, files = _play_episode(
                env, policy, game, episode, chunker, target_steps - steps, len(env_ids) > 1)
            writer.write(files)
            steps += ep_steps
            steps_per_game[game] += ep_steps
            bar.update(ep_steps)
            fps = ep_steps / max(1e-6, time.time() - episode_start)
            values = _episode_metrics(env_ids[game], ep_return, ep_steps, steps, fps, policy_name,
                                      multi_env=len(env_ids) > 1)
            values.update({f'agent/{k}': v for k, v in policy_metrics.items()})
            pending.append((values, steps))
            episode += 1
            if time.time() - last_send >= conf.metrics_interval:
                _send(metrics, pending)
                last_send = time.time()
            if conf.limit_step_ratio > 0 and isinstance(policy, NetworkPolicy):
                policy.wait_for_learner(steps * workers, conf.limit_step_ratio)
    finally:
        writer.write(chunker.flush())
        _send(metrics, pending)
        bar.close()
        writer.close()
        games.close()
    log.info('Worker %d stored %d steps in %d episodes.', worker, steps, episode)


class _Games:
    """A worker's environments and policies, each made when first needed."""

    def __init__(self, conf: Config, run_id: str, env_ids: list[str], worker: int, rng: np.random.Generator):
        self.conf, self.run_id, self.env_ids, self.worker, self.rng = conf, run_id, env_ids, worker, rng
        self.envs: dict[int, Env] = {}
        self.policies: dict[tuple[str, int], object] = {}

    def env(self, game: int) -> Env:
        if game not in self.envs:
            c = self.conf
            self.envs[game] = make_env(self.env_ids[game], action_repeat=c.env_action_repeat, time_limit=c.env_time_limit,
                                       no_terminal=c.env_no_terminal, seed=c.seed * 1000 + self.worker * 100 + game)
        return self.envs[game]

    def policy(self, name: str, game: int):
        if (name, game) not in self.policies:
            self.policies[name, game] = make_policy(name, self.conf, self.run_id, self.env_ids[game],
                                                    self.env(game).action_dim, seed=int(self.rng.integers(2 ** 31)))
        return self.policies[name, game]

    def close(self) -> None:
        for env in self.envs.values():
            env.close()


def _play_episode(env: Env, policy, game: int, episode: int, chunker: EpisodeChunker,
                  max_rows: int, with_env_id: bool) -> tuple[float, int, dict, list]:
    """Play one episode (stopping early after `max_rows` stored rows), feeding rows to the chunker.

    Returns the episode return, the number of stored rows (agent steps + the reset row), the
    policy's metrics averaged over the episode, and the files the chunker emitted.
    """
    def store(row: dict, done: bool = False) -> list:
        if with_env_id:
            row['env_id'] = np.int8(game)
        return chunker.add(row, episode, done=done)

    obs = env.reset()
    files = store(first_row(obs, env.action_dim))
    rows, ep_return, reset = 1, 0.0, True
    averages = Averages()
    while rows < max_rows and not stop_requested():
        action, metrics = policy({**obs, 'reset': reset})
        averages.add(metrics)
        obs, reward, terminated, truncated = env.step(action)
        done = terminated or truncated
        files += store(next_row(obs, action, env.action_dim, reward, terminated), done)
        rows, ep_return, reset = rows + 1, ep_return + reward, False
        if done:
            break
    return ep_return, rows, averages.pop(), files


def _episode_metrics(env_id: str, ep_return: float, ep_steps: int, steps: int, fps: float,
                     policy_name: str, multi_env: bool) -> dict:
    values = {'agent/return': ep_return, 'agent/episode_length': ep_steps, 'agent/steps': steps,
              'agent/fps': fps, f'agent/policy_{policy_name}': 1.0}
    if multi_env:
        game = env_id.split('/')[-1]
        values.update({f'agent/{game}/return': ep_return, f'agent/{game}/episode_length': ep_steps})
    return values


def _send(metrics: MetricsLogger, pending: list[tuple[dict, int]]) -> None:
    metrics.log_many(pending)
    pending.clear()
