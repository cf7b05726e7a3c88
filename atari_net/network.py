"""The Nature-DQN network of the floringogianu/atari-agents DQN_modern checkpoints.

Input: 4 stacked 84×84 grayscale frames as uint8 (oldest first); output: one Q-value per action
of the game's minimal action set, in ALE's order.
"""
from __future__ import annotations

import torch
from torch import nn

FRAME_SIZE = 84
HISTORY = 4


class AtariNet(nn.Module):
    """Conv 8×8/4 32 → 4×4/2 64 → 3×3/1 64 → Linear 512 → Linear n_actions, ReLUs between.

    The attributes are private on purpose: the published checkpoints were saved from a class of
    this name with private `__features` / `__head`, so Python's name mangling yields exactly their
    state-dict keys `_AtariNet__features.{0,2,4}.*` and `_AtariNet__head.{0,2}.*`.
    """

    def __init__(self, n_actions: int):
        super().__init__()
        if n_actions < 1:
            raise ValueError(f'AtariNet needs at least one action, got n_actions={n_actions}.')
        self.n_actions = n_actions
        self.__features = nn.Sequential(
            nn.Conv2d(HISTORY, 32, kernel_size=8, stride=4),  # 84 → 20
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2),  # 20 → 9
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1),  # 9 → 7
            nn.ReLU(),
        )
        self.__head = nn.Sequential(
            nn.Linear(64 * 7 * 7, 512),
            nn.ReLU(),
            nn.Linear(512, n_actions),
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 4, 84, 84) uint8 → (B, n_actions) Q-values."""
        if frames.dtype != torch.uint8 or frames.shape[1:] != (HISTORY, FRAME_SIZE, FRAME_SIZE):
            raise ValueError(f'AtariNet expects uint8 frames of shape (B, {HISTORY}, {FRAME_SIZE}, '
                             f'{FRAME_SIZE}), got {frames.dtype} {tuple(frames.shape)}.')
        x = self.__features(frames.float() / 255.0)
        return self.__head(x.flatten(1))
