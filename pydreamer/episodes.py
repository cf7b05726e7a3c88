"""Episode files: naming, atomic compressed storage, cutting a step stream into files, selection.

An episode is a dict of equal-length arrays, row 0 of each episode being its reset observation:
`image` (uint8; MinAtar (T, 10, 10) category indices, Atari (T, 64, 64, 3)), optional `vecobs`
(T, D) float32, `action` (T, A) float32 one-hot (zeros on reset rows), `reward` (T,) float32,
`terminal` (T,) bool, `reset` (T,) bool and, in multi-env data, `env_id` (T,) int.

A file holds one or more consecutive episodes, or one chunk of a long episode, and is named
`ep{from:06d}_{to:06d}-{chunk}-r{reward:.0f}-{steps:04d}.npz` so that readers can count and
select files without opening them. This module is pure local file logic; `artifacts.py` moves
the files in and out of mlflow runs.
"""
from __future__ import annotations

import os
import posixpath
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from pydreamer.atomic import atomic_write

REQUIRED_KEYS = ('action', 'reward', 'terminal', 'reset')
OBSERVATION_KEYS = ('image', 'vecobs')  # a file holds at least one of them
# Stored-only keys: images with time moved to the last axis, and exact 0/1 actions as bools.
# Together they shrink MinAtar files by a sixth to a quarter (see `stored_bytes_per_step`);
# `load_episode` restores the in-memory format and still reads files with plain `image`/`action`.
IMAGE_TIME_LAST_KEY = 'image_t'
ACTION_ONEHOT_KEY = 'action_onehot'

# The chunk index is optional so that legacy names (`ep000003_000003-r12-1000.npz`) still parse.
_NAME_RE = re.compile(
    r'ep(?P<ep_from>\d+)_(?P<ep_to>\d+)(?:-(?P<chunk>\d+))?-r(?P<reward>-?\d+)-(?P<steps>\d+)\.npz')

# Rows may come from Python scalars; files always hold these dtypes.
_ROW_DTYPES = {'action': np.float32, 'reward': np.float32, 'terminal': bool, 'reset': bool,
               'vecobs': np.float32}


class CorruptEpisodeError(ValueError):
    """An episode file that cannot be read or does not hold a valid episode."""


@dataclass(frozen=True)
class EpisodeFile:
    """What the name of an episode file says: episode range, chunk, total reward and row count."""
    ep_from: int
    ep_to: int
    chunk: int
    reward: float
    steps: int

    @property
    def name(self) -> str:
        return (f'ep{self.ep_from:06d}_{self.ep_to:06d}-{self.chunk}'
                f'-r{self.reward:.0f}-{self.steps:04d}.npz')

    @classmethod
    def parse(cls, name: str) -> EpisodeFile | None:
        """The parsed name of a file (a bare name or a path ending in one); None for any other name,
        including the temporary names used while a file is being written."""
        m = _NAME_RE.fullmatch(posixpath.basename(name))
        if m is None:
            return None
        return cls(ep_from=int(m['ep_from']), ep_to=int(m['ep_to']), chunk=int(m['chunk'] or 0),
                   reward=float(m['reward']), steps=int(m['steps']))


def _invalid_reason(data: Mapping[str, np.ndarray]) -> str | None:
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        return f'it lacks the keys {missing}'
    if not any(k in data for k in OBSERVATION_KEYS):
        return f'it holds no observation (none of {list(OBSERVATION_KEYS)})'
    lengths = {k: (np.shape(v)[0] if np.ndim(v) else None) for k, v in data.items()}
    if len(set(lengths.values())) != 1 or None in lengths.values():
        return f'its arrays have unequal lengths {lengths}'
    if lengths['reward'] == 0:
        return 'it holds no rows'
    return None


def _to_stored(data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    stored = dict(data)
    image = stored.pop('image', None)
    if image is not None and image.ndim >= 3:
        # Per-pixel time series are long runs of equal values, which deflate finds far more easily.
        stored[IMAGE_TIME_LAST_KEY] = np.ascontiguousarray(np.moveaxis(image, 0, -1))
    elif image is not None:
        stored['image'] = image
    action = np.asarray(stored['action'])
    if np.all((action == 0) | (action == 1)):
        stored[ACTION_ONEHOT_KEY] = action.astype(bool)
        del stored['action']
    return stored


def _from_stored(stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    data = dict(stored)
    if IMAGE_TIME_LAST_KEY in data:
        data['image'] = np.ascontiguousarray(np.moveaxis(data.pop(IMAGE_TIME_LAST_KEY), -1, 0))
    if ACTION_ONEHOT_KEY in data:
        data['action'] = data.pop(ACTION_ONEHOT_KEY).astype(np.float32)
    return data


def save_episode(path: str | os.PathLike, data: Mapping[str, np.ndarray]) -> None:
    """Write `data` as a compressed npz at `path`, atomically: readers see the whole file or none."""
    path = Path(path)
    reason = _invalid_reason(data)
    if reason:
        raise ValueError(f'Episode data for {path} is invalid: {reason}.')
    with atomic_write(path) as f:  # its dot-prefixed temporary name is rejected by the file-name regex
        np.savez_compressed(f, **_to_stored(data))


def load_episode(path: str | os.PathLike, name: str | None = None) -> dict[str, np.ndarray]:
    """Read an episode file; raises CorruptEpisodeError for a truncated, corrupt or invalid one,
    calling the file `name` (default: its path), e.g. the artifact URI of a cached copy.

    A file that cannot be opened (missing, no permission) is not corruption: that OSError propagates.
    """
    name = name or path
    with open(path, 'rb') as f:
        try:
            npz = np.load(f)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise CorruptEpisodeError(f'Episode file {name} is not an npz archive.')
            with npz:
                data = _from_stored({k: npz[k] for k in npz.files})
        except CorruptEpisodeError:
            raise
        except Exception as e:
            # The file opened, so any failure to decode its bytes means it is damaged; damaged
            # zips and npy headers fail in many ways (BadZipFile, zlib.error, EOFError, ValueError,
            # NotImplementedError, OSError from a bad offset, tokenize errors, ...).
            raise CorruptEpisodeError(f'Episode file {name} cannot be read: {e!r}') from e
    reason = _invalid_reason(data)
    if reason:
        raise CorruptEpisodeError(f'Episode file {name} is invalid: {reason}.')
    return data


def stored_bytes_per_step(data: Mapping[str, np.ndarray]) -> float:
    """Bytes on disk per row when `data` is saved as one episode file (a figure for benchmarks)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'episode.npz'
        save_episode(path, data)
        return path.stat().st_size / len(data['reward'])


def _stack_rows(rows: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.asarray(np.stack([r[k] for r in rows]), dtype=_ROW_DTYPES.get(k))
            for k in rows[0]}


def _stored(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: obs[key].copy() for key in OBSERVATION_KEYS if key in obs}


def first_row(obs: dict[str, np.ndarray], action_dim: int) -> dict:
    """The step record of a reset observation: no action led to it."""
    return {**_stored(obs), 'action': np.zeros(action_dim, np.float32), 'reward': np.float32(0),
            'terminal': False, 'reset': True}


def next_row(obs: dict[str, np.ndarray], action: int, action_dim: int, reward: float, terminated: bool) -> dict:
    """The step record of the observation that `action` led to."""
    if not 0 <= action < action_dim:
        raise ValueError(f"Action {action} is outside 0..{action_dim - 1}.")
    onehot = np.zeros(action_dim, np.float32)
    onehot[action] = 1.0
    return {**_stored(obs), 'action': onehot, 'reward': np.float32(reward),
            'terminal': bool(terminated), 'reset': False}


class EpisodeChunker:
    """Decides the file boundaries of a stream of steps.

    Consecutive short episodes are packed into one file until it holds >= min_steps rows at an
    episode end. A long episode is cut: whenever the buffer reaches 2*min_steps rows its first
    min_steps rows become a file (the episode's chunk 0, 1, ...), and at the episode's end the
    remaining min_steps..2*min_steps-1 rows become the last chunk. So every file holds
    min_steps..2*min_steps-1 rows, except the one `flush()` emits when the generator stops.

    `add` and `flush` return the finished files as (EpisodeFile, data) pairs for the caller to save.
    Episode indices are the caller's (resume them with `resume_point`); they must increase.
    """

    def __init__(self, min_steps: int = 1000):
        if min_steps < 1:
            raise ValueError(f'EpisodeChunker min_steps must be at least 1, got {min_steps}.')
        self.min_steps = min_steps
        self._rows: list[dict] = []
        self._first_episode = 0  # episode index of self._rows[0]
        self._episode: int | None = None  # index of the newest episode seen
        self._running = False  # whether that episode may still get rows
        self._chunk = 0  # files already emitted that end inside the current episode
        self._keys: set[str] | None = None

    def add(self, row: Mapping, episode_index: int, done: bool = False) -> list[tuple[EpisodeFile, dict]]:
        """Buffer one step. A row with reset=True starts episode `episode_index` (ending the previous
        one); `done=True` ends the episode after this row so its file need not wait for the next reset."""
        if self._keys is None:
            self._keys = set(row)
        elif set(row) != self._keys:
            raise ValueError(f'A step has the keys {sorted(row)} instead of {sorted(self._keys)}.')
        files = []
        if row['reset']:
            if self._episode is not None and episode_index <= self._episode:
                raise ValueError(f'Episode index {episode_index} does not follow episode {self._episode}.')
            if self._running:
                files += self._end_episode()
            self._episode, self._running, self._chunk = episode_index, True, 0
        elif not self._running:
            raise ValueError(f'A step of episode {episode_index} came before its reset row.')
        elif episode_index != self._episode:
            raise ValueError(f'A step of episode {episode_index} came during episode {self._episode}.')
        if not self._rows:
            self._first_episode = episode_index
        self._rows.append(dict(row))
        if len(self._rows) >= 2 * self.min_steps:
            files.append(self._emit(self.min_steps))
        if done:
            files += self._end_episode()
        return files

    def flush(self) -> list[tuple[EpisodeFile, dict]]:
        """Emit whatever is buffered (possibly fewer than min_steps rows) so that no step is lost."""
        return [self._emit(len(self._rows))] if self._rows else []

    def _end_episode(self) -> list[tuple[EpisodeFile, dict]]:
        self._running = False
        return self.flush() if len(self._rows) >= self.min_steps else []

    def _emit(self, n: int) -> tuple[EpisodeFile, dict]:
        data = _stack_rows(self._rows[:n])
        self._rows = self._rows[n:]
        # The last emitted row belongs to the newest episode: finished episodes stay buffered only
        # while they hold fewer than min_steps rows, and a cut emits min_steps rows.
        file = EpisodeFile(ep_from=self._first_episode, ep_to=self._episode, chunk=self._chunk,
                           reward=float(data['reward'].sum()), steps=n)
        self._chunk += 1
        self._first_episode = self._episode
        return file, data


def resume_point(files: Iterable[EpisodeFile]) -> tuple[int, int]:
    """(next episode index, total stored steps) for a generator resuming after writing `files`.

    An episode cut short by a stopped generator is not continued: the next episode gets a new index.
    """
    files = list(files)
    return max((f.ep_to for f in files), default=-1) + 1, sum(f.steps for f in files)


def select_newest(files: Iterable[tuple[str, EpisodeFile]], buffer_size: int) -> list[tuple[str, EpisodeFile]]:
    """The newest files whose steps add up to at most buffer_size (always at least one file).

    Files are (path, EpisodeFile) pairs; the folder of a path is its worker. Within a worker,
    newer means a higher (episode index, chunk); workers are taken in turn, newest first, so a
    fast worker cannot crowd out the others, and episode indices of different workers, which
    count independently, are never compared. Only names are used; no file is opened.
    """
    by_worker: dict[str, list[tuple[str, EpisodeFile]]] = defaultdict(list)
    for path, f in files:
        by_worker[posixpath.dirname(path)].append((path, f))
    queues = [sorted(q, key=lambda pf: (pf[1].ep_to, pf[1].chunk, pf[1].ep_from), reverse=True)
              for _, q in sorted(by_worker.items())]
    selected, total = [], 0
    for rank in range(max(map(len, queues), default=0)):
        for queue in queues:
            if rank < len(queue):
                steps = queue[rank][1].steps
                if selected and total + steps > buffer_size:
                    return selected
                selected.append(queue[rank])
                total += steps
    return selected
