"""ALE game names, native screen sizes and the minimal → environment action mapping."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import ale_py
from ale_py import roms
from ale_py.registration import rom_id_to_name

from pydreamer.envs import ale_rom_id


@dataclass(frozen=True)
class AleGame:
    name: str  # ALE / atari-agents name, e.g. 'SpaceInvaders'
    rom_id: str  # ale_py ROM id, e.g. 'space_invaders'
    screen_shape: tuple[int, int]  # native (height, width); not 210×160 for every game
    minimal_actions: tuple[int, ...]  # ALE Action values, in the order of the DQN's outputs
    # For each minimal action, its index in the action space of an env made with
    # full_action_space=True, which is ALE's legal action set: all 18 actions in enum order for
    # most games, but only 9 (no FIRE) for a few such as Skiing.
    env_actions: tuple[int, ...]


@functools.cache
def ale_game(game: str) -> AleGame:
    """The facts about one game, read from its ROM once per process (~0.1 s)."""
    rom_id = ale_rom_id(game)
    # Same logger level as the gymnasium AtariEnv sets, so loading a ROM prints no banner.
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    ale = ale_py.ALEInterface()
    ale.loadROM(roms.get_rom_path(rom_id))
    minimal = tuple(action.value for action in ale.getMinimalActionSet())
    legal = [action.value for action in ale.getLegalActionSet()]
    return AleGame(
        name=rom_id_to_name(rom_id),
        rom_id=rom_id,
        screen_shape=tuple(ale.getScreenDims()),
        minimal_actions=minimal,
        env_actions=tuple(legal.index(action) for action in minimal),
    )
