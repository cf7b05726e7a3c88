"""A data policy that plays MinAtar with a mixture of DQN checkpoints.

One checkpoint is drawn uniformly at random at every episode start, so a game's episodes mix the
skill levels saved during training (early, half-trained and final agents). Actions are
ε-greedy over the drawn network's Q-values in MinAtar's full 6-action space (env ids `-v0`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from dqn.checkpoints import find_checkpoints
from dqn.networks import GRID, checkpoint_shape, load_q_network, read_state_dict

N_ACTIONS = 6  # MinAtar's full action set


class DQNPolicy:
    """ε-greedy policy over DQN checkpoints, one checkpoint per episode.

    Args:
        checkpoint_dirs_or_files: a game folder of `model_<n>.pt` files (as written by
            `dqn/train_agents.py`), a single file, or a list of either.
        n_actions: actions of the environment; 6 for MinAtar `-v0` ids.
        epsilon: probability of a uniformly random action. 0.01 keeps the agents close to their
            greedy skill while avoiding deterministic loops; it is also the evaluation ε of
            `train_agents.py`, so its logged returns describe this policy.
        seed: seeds the policy's own RNG (checkpoint draws and exploration).
        in_channels: C of the game's 10×10×C observation, checked against the files when given;
            by default taken from the first checkpoint.

    `policy(obs) -> (action, metrics)` reads `obs['minatar_state']`, the raw (10, 10, C) bool
    MinAtar observation (not the categorical image), and `obs['reset']`, true on the first
    step of an episode, when a new checkpoint is drawn.
    """

    def __init__(self, checkpoint_dirs_or_files: str | Path | Iterable[str | Path],
                 n_actions: int = N_ACTIONS, epsilon: float = 0.01, seed: int | None = None,
                 in_channels: int | None = None):
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f'DQNPolicy epsilon must lie in [0, 1], got {epsilon}.')
        self.paths = find_checkpoints(checkpoint_dirs_or_files)
        if in_channels is None:
            _, in_channels, _ = checkpoint_shape(read_state_dict(self.paths[0]), self.paths[0])
        self.in_channels = in_channels
        self.n_actions = n_actions
        self.epsilon = epsilon
        self.networks = [load_q_network(p, in_channels, n_actions) for p in self.paths]
        self._rng = np.random.default_rng(seed)
        self._index = self._draw()

    def _draw(self) -> int:
        return int(self._rng.integers(len(self.networks)))

    def __call__(self, obs: dict) -> tuple[int, dict]:
        if 'minatar_state' not in obs:
            raise KeyError(f"DQNPolicy needs obs['minatar_state'], the raw 10×10×C MinAtar observation; "
                           f'got keys {sorted(obs)}.')
        state = np.asarray(obs['minatar_state'])
        if state.shape != (GRID, GRID, self.in_channels):
            raise ValueError(f"DQNPolicy got obs['minatar_state'] of shape {state.shape}, expected "
                             f'{(GRID, GRID, self.in_channels)} for its checkpoints.')
        if obs.get('reset', False):
            self._index = self._draw()
        if self._rng.random() < self.epsilon:
            action = int(self._rng.integers(self.n_actions))
        else:
            with torch.inference_mode():
                q = self.networks[self._index](torch.tensor(state)[None])  # (1, A); copies, so read-only arrays are fine
            action = int(q.argmax(1))
        return action, {'policy_checkpoint': self._index}
