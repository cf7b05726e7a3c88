"""Data policy that plays Atari with the floringogianu/atari-agents DQN_modern checkpoints."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
import torch

from atari_net.checkpoint import CHECKPOINT_RE, checkpoint_step, load_atari_net
from atari_net.games import ale_game
from atari_net.network import FRAME_SIZE, HISTORY, AtariNet


def find_checkpoints(checkpoint_dir: str | os.PathLike) -> list[Path]:
    """All `model_<step:08d>.gz` files in the folder and its sub-folders, sorted by path.

    Sub-folders are searched because the published layout has one folder per training seed
    (`DQN_modern/<Game>/<seed>/model_<step>.gz`), so a game folder yields every seed's checkpoints.
    """
    folder = Path(checkpoint_dir)
    paths = sorted(p for p in folder.rglob('model_*.gz') if CHECKPOINT_RE.fullmatch(p.name))
    if not paths:
        if folder.is_dir():
            state = 'has no model_<step:08d>.gz files'
        else:
            state = 'is not a folder' if folder.exists() else 'does not exist'
        raise FileNotFoundError(
            f'Atari checkpoint folder {folder} {state}; expected files model_<step:08d>.gz '
            f'(in it or in its sub-folders). The public DQN_modern checkpoints come from the '
            f'floringogianu/atari-agents project (models/DQN_modern/<Game>/<seed>/) and must be '
            f'copied there by hand.')
    return paths


class AtariNetPolicy:
    """ε-greedy DQN policy over a mixture of checkpoints of one game.

    Maps an observation dict to (action, metrics). `obs['screen_gray']` is the environment's
    max-pooled grayscale frame at the game's native resolution, e.g. (210, 160) uint8;
    `obs['reset']` is True on the first observation of an episode. The action is an index into
    the action space of the environment made with `full_action_space=True`.

    At each episode start the frame stack is cleared and one checkpoint is drawn at random, so
    the data mixes the skill levels of the checkpoints. Every file is loaded once at construction
    to fail fast, but only the current network stays in memory (the 51 published checkpoints of
    one seed would take ~0.35 GB), so the drawn file is read again at the episode start.

    Checkpoints are unpickled with `weights_only=True` only (see `load_atari_net`).
    """

    def __init__(self, checkpoint_dir: str | os.PathLike, game: str, epsilon: float = 0.001,
                 seed: int = 0):
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f'AtariNetPolicy epsilon must be in [0, 1], got {epsilon}.')
        self.game = ale_game(game)
        self.epsilon = epsilon
        self._n_actions = len(self.game.minimal_actions)
        self._env_actions = self.game.env_actions
        self._paths = find_checkpoints(checkpoint_dir)
        for path in self._paths:
            load_atari_net(path, self._n_actions)
        self._rng = np.random.default_rng(seed)
        self._model: AtariNet | None = None
        self._checkpoint = -1
        self._checkpoint_step = -1
        self._stack = np.zeros((HISTORY, FRAME_SIZE, FRAME_SIZE), np.uint8)  # oldest frame first

    @property
    def checkpoints(self) -> list[Path]:
        return list(self._paths)

    def __call__(self, obs: Mapping[str, Any]) -> tuple[int, dict[str, float]]:
        frame = np.asarray(obs['screen_gray'])
        if frame.dtype != np.uint8 or frame.shape != self.game.screen_shape:
            raise ValueError(
                f"AtariNetPolicy expects obs['screen_gray'] as the native {self.game.name} "
                f'grayscale frame, uint8 of shape {self.game.screen_shape}, got {frame.dtype} '
                f'{frame.shape}.')
        # The first call also starts an episode: there is no network or history before it.
        if obs['reset'] or self._model is None:
            self._start_episode()
        # cv2 takes (width, height); INTER_AREA is what the agents were trained on.
        small = cv2.resize(frame, (FRAME_SIZE, FRAME_SIZE), interpolation=cv2.INTER_AREA)
        self._stack[:-1] = self._stack[1:]
        self._stack[-1] = small
        with torch.inference_mode():
            q = self._model(torch.from_numpy(self._stack).unsqueeze(0))[0]  # (n_actions,)
        if self._rng.random() < self.epsilon:
            action = int(self._rng.integers(self._n_actions))
        else:
            action = int(q.argmax())
        metrics = {
            'policy_checkpoint': self._checkpoint,
            'policy_checkpoint_step': self._checkpoint_step,
            'policy_value': float(q.max()),
        }
        return self._env_actions[action], metrics

    def _start_episode(self) -> None:
        # Upstream never cleared this stack between episodes (DESIGN §7 item 7).
        self._stack[:] = 0
        index = int(self._rng.integers(len(self._paths)))
        if index != self._checkpoint:
            self._model = load_atari_net(self._paths[index], self._n_actions)
            self._checkpoint = index
            self._checkpoint_step = checkpoint_step(self._paths[index])
