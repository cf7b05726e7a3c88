"""Atari data policy from the floringogianu/atari-agents DQN_modern checkpoints (DESIGN §6)."""
from atari_net.checkpoint import load_atari_net, save_atari_net
from atari_net.games import AleGame, ale_game
from atari_net.network import AtariNet
from atari_net.policy import AtariNetPolicy, find_checkpoints
from pydreamer.envs import ale_game_name  # the id parsing lives with the other env ids

__all__ = [
    'AleGame',
    'AtariNet',
    'AtariNetPolicy',
    'ale_game',
    'ale_game_name',
    'find_checkpoints',
    'load_atari_net',
    'save_atari_net',
]
