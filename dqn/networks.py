"""Q-networks for MinAtar and a loader that recognises them from their state-dict keys.

Both networks take raw MinAtar observations, a (B, 10, 10, C) bool or float tensor, and return
(B, n_actions) Q-values, so the replay buffer and the data policy never depend on the architecture.

- `ConvQNetwork` is MinAtar's reference DQN (Young & Tian 2019, examples/dqn.py): one 3×3 conv of
  16 channels → 128 → actions. Its parameter names (`conv`, `fc_hidden`, `output`) are MinAtar's.
- `MLPQNetwork` is the original project's agent: the observation flattened in HWC order →
  128 → 128 → actions, layers named `layer1`..`layer3`. Its files are plain state dicts and
  must keep loading unchanged, so neither names nor flatten order may change.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pydreamer.checkpoint import CheckpointError

GRID = 10  # MinAtar observations are 10×10×C
HIDDEN = 128

CONV_KEYS = frozenset({'conv.weight', 'conv.bias', 'fc_hidden.weight', 'fc_hidden.bias',
                       'output.weight', 'output.bias'})
MLP_KEYS = frozenset({'layer1.weight', 'layer1.bias', 'layer2.weight', 'layer2.bias',
                      'layer3.weight', 'layer3.bias'})


class ConvQNetwork(nn.Module):
    arch = 'conv'

    def __init__(self, in_channels: int, n_actions: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, kernel_size=3, stride=1)
        self.fc_hidden = nn.Linear(16 * (GRID - 2) ** 2, HIDDEN)
        self.output = nn.Linear(HIDDEN, n_actions)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float().permute(0, 3, 1, 2)  # (B, 10, 10, C) -> (B, C, 10, 10)
        x = F.relu(self.conv(x))  # (B, 16, 8, 8)
        x = F.relu(self.fc_hidden(x.flatten(1)))
        return self.output(x)  # (B, A)


class MLPQNetwork(nn.Module):
    arch = 'mlp'

    def __init__(self, in_channels: int, n_actions: int):
        super().__init__()
        self.layer1 = nn.Linear(GRID * GRID * in_channels, HIDDEN)
        self.layer2 = nn.Linear(HIDDEN, HIDDEN)
        self.layer3 = nn.Linear(HIDDEN, n_actions)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float().flatten(1)  # (B, 10·10·C) in HWC order, as the original agents were trained
        x = F.relu(self.layer1(x))
        x = F.relu(self.layer2(x))
        return self.layer3(x)  # (B, A)


ARCHITECTURES = {'conv': ConvQNetwork, 'mlp': MLPQNetwork}


def build_q_network(arch: str, in_channels: int, n_actions: int) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise ValueError(f'Unknown DQN architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}.')
    return ARCHITECTURES[arch](in_channels, n_actions)


def checkpoint_shape(state_dict: dict, path: Path | str = '<state dict>') -> tuple[str, int, int]:
    """(architecture, in_channels, n_actions) of a Q-network state dict, recognised by its keys."""
    keys = set(state_dict)
    if keys == CONV_KEYS:
        in_channels = state_dict['conv.weight'].shape[1]
        n_actions = state_dict['output.weight'].shape[0]
        return 'conv', in_channels, n_actions
    if keys == MLP_KEYS:
        in_features = state_dict['layer1.weight'].shape[1]
        if in_features % (GRID * GRID):
            raise CheckpointError(f'{path}: layer1 takes {in_features} inputs, expected a multiple of '
                                  f'{GRID * GRID} (a flattened {GRID}×{GRID}×C observation).')
        n_actions = state_dict['layer3.weight'].shape[0]
        return 'mlp', in_features // (GRID * GRID), n_actions
    raise CheckpointError(f'{path} is not a MinAtar DQN state dict: found keys {sorted(keys)}, expected '
                          f'{sorted(CONV_KEYS)} (conv) or {sorted(MLP_KEYS)} (mlp).')


def read_state_dict(path: Path | str) -> dict:
    try:
        state_dict = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f'DQN checkpoint {path} does not exist.') from None
    except Exception as e:  # a truncated or foreign file: report which one and why
        raise CheckpointError(f'DQN checkpoint {path} could not be read: {e}') from e
    if not isinstance(state_dict, dict):
        raise CheckpointError(f'DQN checkpoint {path} holds a {type(state_dict).__name__}, expected a '
                              f'plain state dict saved with torch.save(model.state_dict()).')
    return state_dict


def load_q_network(path: Path | str, in_channels: int, n_actions: int) -> nn.Module:
    """Load a conv or MLP Q-network from a plain state dict, checking it fits the game.

    The architecture is recognised from the keys; `in_channels` (C of the game's 10×10×C
    observation) and `n_actions` must match the shapes stored in the file.
    """
    state_dict = read_state_dict(path)
    arch, file_channels, file_actions = checkpoint_shape(state_dict, path)
    if file_channels != in_channels:
        raise CheckpointError(f'DQN checkpoint {path} ({arch}) takes {file_channels} observation channels, '
                              f'but the game has {in_channels}.')
    if file_actions != n_actions:
        raise CheckpointError(f'DQN checkpoint {path} ({arch}) outputs {file_actions} actions, '
                              f'but the game has {n_actions}.')
    model = build_q_network(arch, in_channels, n_actions)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:  # e.g. hidden layers of another width
        raise CheckpointError(f'DQN checkpoint {path} does not fit the {arch} network: {e}') from e
    return model.eval()
