"""Data policies used by generators.

A policy maps an observation dict (with `reset` true on an episode's first observation) to an
action index and a dict of metrics; it knows nothing about files or mlflow runs beyond loading
its own weights. The policies that need torch are imported only when made, so that launchers,
which check the policies of a config before starting anything, stay light.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pydreamer.config import PROJECT_ROOT, Config

POLICY_NAMES = ('random', 'network', 'dqn', 'atari_net')


class RandomPolicy:
    def __init__(self, action_dim: int, seed: int):
        self.action_dim = action_dim
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: dict) -> tuple[int, dict]:
        return int(self.rng.integers(self.action_dim)), {}


def checkpoint_folder(conf: Config, key: str, env_id: str) -> Path:
    """The checkpoint folder that the map in config key `key` gives for `env_id` (relative paths
    are taken from the project root, where `dqn/train_agents.py` writes)."""
    folders = getattr(conf, key)
    if not isinstance(folders, dict) or env_id not in folders:
        known = ', '.join(folders) if isinstance(folders, dict) else 'nothing'
        raise ValueError(f'Config key {key} must map {env_id} to a checkpoint folder; it maps {known}.')
    path = Path(folders[env_id])
    return path if path.is_absolute() else PROJECT_ROOT / path


def make_policy(name: str, conf: Config, run_id: str, env_id: str, action_dim: int, seed: int):
    if name == 'random':
        return RandomPolicy(action_dim, seed)
    if name == 'dqn':
        from dqn.policy import DQNPolicy
        return DQNPolicy(checkpoint_folder(conf, 'dqn_dir', env_id), n_actions=action_dim, seed=seed)
    if name == 'atari_net':
        from atari_net import AtariNetPolicy, ale_game_name
        return AtariNetPolicy(checkpoint_folder(conf, 'atari_net_dir', env_id), ale_game_name(env_id), seed=seed)
    if name == 'network':
        from pydreamer.network_policy import NetworkPolicy
        fallback = None
        start = max(conf.actor_warmup_steps, conf.policy_start_step)
        if start > 0 and conf.generator_prefill_policy != 'network':
            fallback = make_policy(conf.generator_prefill_policy, conf, run_id, env_id, action_dim, seed + 1)
        return NetworkPolicy(conf, run_id, action_dim, seed, conf.policy_reload_interval,
                             fallback=fallback, min_step=start)
    raise ValueError(f'Unknown policy {name!r} for {env_id}; expected one of: {", ".join(POLICY_NAMES)}.')
