"""ALE game names, native screen sizes and the minimal → environment action mapping."""
from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass

import ale_py
from ale_py import roms
from ale_py.registration import rom_id_to_name

# Our env ids (DESIGN §3): `Atari-Space_Invaders`, `AtariGray-Pong`.
_ENV_ID_PREFIXES = ('Atari-', 'AtariGray-')


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


def _key(name: str) -> str:
    return name.replace('_', '').lower()


@functools.cache
def _rom_ids_by_key() -> dict[str, str]:
    return {_key(rom_id): rom_id for rom_id in roms.get_all_rom_ids()}


def ale_game_name(env_id: str) -> str:
    """'Atari-Space_Invaders', 'AtariGray-Pong', 'SpaceInvaders' or 'space_invaders' → ALE name."""
    game = env_id
    for prefix in _ENV_ID_PREFIXES:
        game = game.removeprefix(prefix)
    rom_id = _rom_ids_by_key().get(_key(game))
    if rom_id is None:
        names = [rom_id_to_name(r) for r in _rom_ids_by_key().values()]
        close = difflib.get_close_matches(rom_id_to_name(game), names, n=3)
        hint = f' Did you mean {", ".join(close)}?' if close else ''
        raise ValueError(f'Unknown Atari game {env_id!r}; expected an ALE game name such as '
                         f'Pong or SpaceInvaders, optionally as Atari-<Game> or '
                         f'AtariGray-<Game>.{hint}')
    return rom_id_to_name(rom_id)


@functools.cache
def ale_game(game: str) -> AleGame:
    """The facts about one game, read from its ROM once per process (~0.1 s)."""
    name = ale_game_name(game)
    rom_id = _rom_ids_by_key()[_key(name)]
    # Same logger level as the gymnasium AtariEnv sets, so loading a ROM prints no banner.
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    ale = ale_py.ALEInterface()
    ale.loadROM(roms.get_rom_path(rom_id))
    minimal = tuple(action.value for action in ale.getMinimalActionSet())
    legal = [action.value for action in ale.getLegalActionSet()]
    return AleGame(
        name=name,
        rom_id=rom_id,
        screen_shape=tuple(ale.getScreenDims()),
        minimal_actions=minimal,
        env_actions=tuple(legal.index(action) for action in minimal),
    )
