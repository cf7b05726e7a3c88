"""Data policies used by generators.

A policy maps an observation dict (with `reset` true on an episode's first observation) to an
action index and a dict of metrics; it knows nothing about files or mlflow.
"""
from __future__ import annotations

import numpy as np


class RandomPolicy:
    def __init__(self, action_dim: int, seed: int):
        self.action_dim = action_dim
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: dict) -> tuple[int, dict]:
        return int(self.rng.integers(self.action_dim)), {}


POLICY_NAMES = ('random',)


def make_policy(name: str, action_dim: int, seed: int):
    if name == 'random':
        return RandomPolicy(action_dim, seed)
    raise ValueError(f'Unknown policy {name!r}; expected one of: {", ".join(POLICY_NAMES)}.')
