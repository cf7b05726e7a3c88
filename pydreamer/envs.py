"""Environments behind one small interface, and the step records that generators store.

Accepted ids:
  MinAtar/<Game>-v0 | -v1   full 6 actions | the game's minimal action set
  Atari-<Game_Name>         ALE game, 64x64 RGB image, full 18 actions (pydreamer's protocol)
  AtariGray-<Game_Name>     the same with a 64x64x1 grayscale image
  anything else             a registered gymnasium id with a 1-D Box observation (`vecobs`)

A step record is written for the reset observation and after every step; action[t] is the
action that LED to observation t, so the reset row carries a zero action and zero reward:

    call        reset()    step(a0)     step(a1)    ...   step(a_{n-1})
    obs         o0         o1           o2                on
    action      0          onehot(a0)   onehot(a1)        onehot(a_{n-1})
    reward      0          r1           r2                rn
    terminal    False      False        False             True only for a real game over
    reset       True       False        False             False

A time limit ends the episode with truncated=True and leaves `terminated` as the game reports
it, so a game over on the last allowed step is still terminal.
"""

import difflib
import functools
import re
import warnings
from collections.abc import Callable

import gymnasium
import numpy as np

from pydreamer.lean_imports import hidden_modules

with hidden_modules('matplotlib', 'seaborn'):  # minatar's renderer; frames are coloured by pydreamer.dreams
    import minatar.gym


MINATAR_GAMES = ('Asterix', 'Breakout', 'Freeway', 'Seaquest', 'SpaceInvaders')
MINATAR_CATEGORIES = 11  # empty + Seaquest's 10 channels, the most of any game
ATARI_IMAGE_SIZE = 64

ObsFn = Callable[[np.ndarray], dict[str, np.ndarray]]


def minatar_game(name: str) -> str:
    """'Breakout', 'space_invaders' or 'MinAtar/SpaceInvaders-v0' -> 'SpaceInvaders'."""
    key = re.sub(r'-v\d+$', '', name.removeprefix('MinAtar/')).replace('_', '').lower()
    for game in MINATAR_GAMES:
        if game.lower() == key:
            return game
    raise EnvError(f'{name!r} is not a MinAtar game; expected one of {", ".join(MINATAR_GAMES)}.')


def minatar_module(game: str) -> str:
    """minatar's module (and dqn/train_agents.py's folder) of a game: 'SpaceInvaders' -> 'space_invaders'."""
    return re.sub(r'(?<=[a-z])(?=[A-Z])', '_', game).lower()


def game_name(env_id: str | list | None) -> str:
    """How run names and the `game` tag call an env id (or a list of them): 'MinAtar/Breakout-v0' ->
    'Breakout', 'AtariGray-Pong' -> 'Pong', 'CartPole-v1' -> 'CartPole'; a list joins them with ','."""
    if isinstance(env_id, (list, tuple)):
        return ','.join(game_name(e) for e in env_id)
    name = re.sub(r'^(MinAtar/|Atari-|AtariGray-)', '', env_id or '')
    return re.sub(r'-v\d+$', '', name.rpartition('/')[2])


class EnvError(ValueError):
    """An environment id that cannot be used, alone or with the config's env settings."""


class UnknownEnvError(EnvError):
    """An environment id that matches none of the accepted forms."""


def _unknown_env(env_id: str, hint: str = '') -> UnknownEnvError:
    return UnknownEnvError(
        f"Unknown environment id {env_id!r}: expected MinAtar/<Game>-v0|v1 with <Game> one of "
        f"{', '.join(MINATAR_GAMES)}, Atari-<Game> or AtariGray-<Game> with an ALE game name "
        f"(e.g. Atari-Space_Invaders), or a registered gymnasium id.{hint}")


def env_id_list(env_id) -> list[str]:
    if env_id is None:
        raise EnvError('Config key env_id is not set; give --env_id <id> or a preset that sets it, '
                       'e.g. --configs defaults minatar.')
    ids = [env_id] if isinstance(env_id, str) else list(env_id or [])
    if not ids or not all(isinstance(i, str) and i for i in ids):
        raise EnvError(f'Config key env_id must be an env id or a list of env ids, got {env_id!r}.')
    return ids


@functools.cache
def _register_envs() -> None:
    # gymnasium 1.x loads no plugins, so the third-party ids exist only after this.
    minatar.gym.register_envs()
    try:
        import ale_py  # Atari only: MinAtar and other ids work without it (e.g. on a bare GPU machine)
    except ImportError:
        return
    gymnasium.register_envs(ale_py)


def _rom_name(rom_id: str) -> str:
    from ale_py.registration import rom_id_to_name
    return rom_id_to_name(rom_id)


def _ale_key(name: str) -> str:
    return name.replace('_', '').lower()


@functools.cache
def _ale_rom_ids() -> dict[str, str]:
    """Lower-case game name without separators -> ale_py ROM id, e.g. 'spaceinvaders' -> 'space_invaders'."""
    from ale_py import roms
    return {_ale_key(rom_id): rom_id for rom_id in roms.get_all_rom_ids()}


def ale_rom_id(env_id: str) -> str:
    """The ROM of 'Atari-Space_Invaders', 'AtariGray-Pong', 'SpaceInvaders' or 'space_invaders'
    (UnknownEnvError with the closest names for another)."""
    rom_id = _ale_rom_ids().get(_ale_key(_ale_game(env_id)))
    if rom_id is None:
        raise UnknownEnvError(f'Unknown Atari game {env_id!r}; expected an ALE game name such as Pong or '
                              f'SpaceInvaders, optionally as Atari-<Game> or AtariGray-<Game>.{_ale_hint(env_id)}')
    return rom_id


def _ale_game(env_id: str) -> str:
    return re.sub(r'^(Atari-|AtariGray-)', '', env_id)


def _ale_hint(env_id: str) -> str:
    names = [_rom_name(r) for r in _ale_rom_ids().values()]
    close = difflib.get_close_matches(_rom_name(_ale_game(env_id)), names, n=3)
    return f' Did you mean {", ".join(close)}?' if close else ''


def ale_game_name(env_id: str) -> str:
    """The ALE (and atari-agents) name of an Atari env id or game: 'Atari-Space_Invaders' -> 'SpaceInvaders'."""
    return _rom_name(ale_rom_id(env_id))


class Env:
    """A discrete-action environment that returns observation dicts and counts agent steps."""

    def __init__(self, env_id: str, env: gymnasium.Env, to_obs: ObsFn, *,
                 time_limit: int, no_terminal: bool, seed: int | None):
        self.env_id = env_id
        self.action_dim = int(env.action_space.n)
        self._env = env
        self._to_obs = to_obs
        self._time_limit = time_limit
        self._no_terminal = no_terminal
        self._seed = seed  # only the first reset seeds, so later episodes differ
        self._steps = 0
        self._running = False

    def reset(self) -> dict[str, np.ndarray]:
        obs, _ = self._env.reset(seed=self._seed)
        self._seed = None
        self._steps = 0
        self._running = True
        return self._to_obs(obs)

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool]:
        if not self._running:
            raise RuntimeError(f"{self.env_id}: step() needs a running episode; call reset() first.")
        action = int(action)
        if not 0 <= action < self.action_dim:
            raise ValueError(f"{self.env_id}: action {action} is outside 0..{self.action_dim - 1}.")
        obs, reward, terminated, truncated, _ = self._env.step(action)
        self._steps += 1
        if self._no_terminal:
            # The episode still ends here, but as a cut the world model must not learn as terminal.
            terminated, truncated = False, truncated or terminated
        if self._time_limit and self._steps >= self._time_limit:
            truncated = True
        self._running = not (terminated or truncated)
        return self._to_obs(obs), float(reward), bool(terminated), bool(truncated)

    def close(self) -> None:
        self._env.close()


def make_env(env_id: str, *, action_repeat: int = 1, time_limit: int = 0,
             no_terminal: bool = False, seed: int | None = None) -> Env:
    """Build the environment for one of the ids in the module docstring."""
    if action_repeat < 1:
        raise ValueError(f"action_repeat must be at least 1, got {action_repeat}.")
    if time_limit < 0:
        raise ValueError(f"time_limit must be 0 (no limit) or a positive number of agent steps, got {time_limit}.")
    _register_envs()
    if env_id.startswith('MinAtar/'):
        env, to_obs = _make_minatar(env_id, action_repeat)
    elif env_id.startswith(('Atari-', 'AtariGray-')):
        env, to_obs = _make_atari(env_id, action_repeat)
    else:
        env, to_obs = _make_gymnasium(env_id, action_repeat)
    return Env(env_id, env, to_obs, time_limit=time_limit, no_terminal=no_terminal, seed=seed)


# --- MinAtar

def minatar_image(state: np.ndarray) -> np.ndarray:
    """(10, 10, C) bool -> (10, 10) uint8: 0 where no channel is active, else 1 + the lowest active channel."""
    occupied = state.any(axis=-1)
    first = state.argmax(axis=-1)  # argmax of booleans is the first True
    return np.where(occupied, first + 1, 0).astype(np.uint8)


def _minatar_obs(state: np.ndarray) -> dict[str, np.ndarray]:
    # The raw state is kept because DQN policies need it; the categorical map loses overlaps.
    return {'image': minatar_image(state), 'minatar_state': state}


def _make_minatar(env_id: str, action_repeat: int) -> tuple[gymnasium.Env, ObsFn]:
    match = re.fullmatch(r'MinAtar/(\w+)-v([01])', env_id)
    if not match or match[1] not in MINATAR_GAMES:
        raise _unknown_env(env_id)
    if action_repeat != 1:
        raise EnvError(
            f"Config key env_action_repeat is {action_repeat} but {env_id} needs 1: a MinAtar step is "
            f"already one whole game tick with no frames to skip (the minatar preset sets it).")
    with warnings.catch_warnings():
        # v0 (the full action set) is a deliberate choice, not an outdated version.
        warnings.filterwarnings('ignore', message='.*is out of date')
        env = gymnasium.make(env_id)  # minatar defaults: sticky actions 0.1, difficulty ramping
    return env, _minatar_obs


# --- Atari

class _GrayFrames(gymnasium.Wrapper):
    """Sits on the frameskip=1 ALE env, below AtariPreprocessing, and copies ALE's own grayscale
    screen (`getScreenGrayscale`, the frames the atari_net agents were trained on; for some games,
    e.g. AirRaid, far from a grayscale conversion of the RGB screen) after emulator frames.

    `count` is the number of frames since `clear()` (called at the start of each agent step);
    only the last two frames of an agent step of `frame_skip` frames are copied, as ALE's
    grayscale conversion costs about half an emulator frame.
    """

    def __init__(self, env: gymnasium.Env, frame_skip: int):
        super().__init__(env)
        self.frames = [np.zeros(env.observation_space.shape[:2], np.uint8) for _ in range(2)]
        self.frame_skip = frame_skip
        self.count = 0

    def clear(self) -> None:
        self.count = 0

    def latest(self, back: int = 0) -> np.ndarray:
        """The gray frame `back` frames before the most recent one (back = 0 or 1)."""
        return self.frames[(self.count - 1 - back) % 2]

    def step(self, action):
        result = self.env.step(action)
        if self.count >= self.frame_skip - 2:
            self.env.unwrapped.ale.getScreenGrayscale(self.frames[self.count % 2])
        self.count += 1
        return result


class _AtariScreens(gymnasium.Wrapper):
    """On top of AtariPreprocessing: observations become {'rgb': its max-pooled native RGB frame,
    'gray': the max of ALE's grayscale screens of the same emulator frames}.

    The frames AtariPreprocessing (gymnasium 1.4) pools, mirrored here for the gray screen:
      reset:             the screen after the no-ops (pooled with zeros, so unchanged);
      a full step:       the last two of its `frame_skip` frames (only the last when frame_skip = 1);
      game ends mid-step: it stops recording BEFORE storing the frame on which the game ended, so
                         ending on the last frame (frame_skip > 1) pools the previous observation
                         with the second-to-last frame, and ending earlier repeats the previous
                         observation.
    """

    def __init__(self, env: gymnasium.Wrapper, frames: _GrayFrames):  # env: AtariPreprocessing
        super().__init__(env)
        self._frames = frames
        self._gray = np.zeros_like(frames.frames[0])
        self.observation_space = gymnasium.spaces.Dict({
            'rgb': env.observation_space,
            'gray': gymnasium.spaces.Box(0, 255, self._gray.shape, np.uint8)})

    def reset(self, **kwargs):
        rgb, info = self.env.reset(**kwargs)
        self._gray = self.env.unwrapped.ale.getScreenGrayscale()
        return {'rgb': rgb, 'gray': self._gray}, info

    def step(self, action):
        self._frames.clear()
        rgb, reward, terminated, truncated, info = self.env.step(action)
        played, skip = self._frames.count, self._frames.frame_skip
        if not (terminated or truncated):
            assert played == skip, (played, skip)
            gray = self._frames.latest().copy() if skip == 1 else np.maximum(self._frames.latest(), self._frames.latest(1))
        elif played == skip > 1:  # ended on the last frame, which AtariPreprocessing did not record
            gray = np.maximum(self._gray, self._frames.latest(1))
        else:  # ended earlier: AtariPreprocessing repeats its previous observation
            gray = self._gray.copy()
        self._gray = gray
        return {'rgb': rgb, 'gray': gray}, reward, terminated, truncated, info


def _atari_obs(screens: dict[str, np.ndarray], gray: bool) -> dict[str, np.ndarray]:
    """Native max-pooled screens -> the 64x64 image plus the native grayscale screen (ALE's own
    grayscale, which the atari_net policy resizes to 84x84)."""
    size = (ATARI_IMAGE_SIZE, ATARI_IMAGE_SIZE)
    import cv2
    if gray:  # ALE's own grayscale, as pydreamer got it from AtariPreprocessing(grayscale_obs=True)
        image = cv2.resize(screens['gray'], size, interpolation=cv2.INTER_AREA)[:, :, None]
    else:
        image = cv2.resize(screens['rgb'], size, interpolation=cv2.INTER_AREA)
    return {'image': image, 'screen_gray': screens['gray']}


def _make_atari(env_id: str, action_repeat: int) -> tuple[gymnasium.Env, ObsFn]:
    prefix = env_id.partition('-')[0]
    try:
        name = ale_game_name(env_id)
    except UnknownEnvError:
        raise _unknown_env(env_id, _ale_hint(env_id)) from None
    _register_envs()
    env = gymnasium.make(f'ALE/{name}-v5', frameskip=1, repeat_action_probability=0.25, full_action_space=True)
    height, width = env.observation_space.shape[:2]
    frames = _GrayFrames(env, action_repeat)
    # At the native screen size AtariPreprocessing only skips frames, max-pools the last two
    # and does the no-op reset; resizing and grayscale happen in _atari_obs.
    from gymnasium.wrappers import AtariPreprocessing
    env = AtariPreprocessing(frames, noop_max=30, frame_skip=action_repeat, screen_size=(width, height),
                             terminal_on_life_loss=False, grayscale_obs=False)
    env = _AtariScreens(env, frames)
    return env, functools.partial(_atari_obs, gray=prefix == 'AtariGray')


# --- any other gymnasium id

def _vector_obs(obs: np.ndarray) -> dict[str, np.ndarray]:
    return {'vecobs': np.asarray(obs, dtype=np.float32)}


def _make_gymnasium(env_id: str, action_repeat: int) -> tuple[gymnasium.Env, ObsFn]:
    if env_id not in gymnasium.registry:
        raise _unknown_env(env_id)
    if action_repeat != 1:
        raise EnvError(
            f"Config key env_action_repeat is {action_repeat} but {env_id} needs 1: frame skipping is "
            f"only implemented for Atari ids.")
    env = gymnasium.make(env_id)
    if not (isinstance(env.action_space, gymnasium.spaces.Discrete) and env.action_space.start == 0):
        env.close()
        raise EnvError(f"{env_id}: expected a Discrete action space starting at 0, got {env.action_space}.")
    if not (isinstance(env.observation_space, gymnasium.spaces.Box) and len(env.observation_space.shape) == 1):
        env.close()
        raise EnvError(f"{env_id}: expected a 1-D Box observation space, got {env.observation_space}.")
    return env, _vector_obs


# --- step records
