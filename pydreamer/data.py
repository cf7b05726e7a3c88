"""Training batches from a run's episode folders: B independent streams of consecutive windows.

Each of the B streams picks a random episode file, walks through it in consecutive windows of T
rows and continues with another random file when it runs out; the first file of a stream starts
at a random offset so the streams do not move in lock-step. Consecutive batches therefore
continue each other row for row, which lets the learner carry the RSSM state from one batch to
the next (truncated back-propagation through time).

Time alignment of one window (row t of a stream, as stored by the generator):

    row:       t0          t1          t2    ...
    image      o0 (reset)  o1          o2
    action     0           a0 -> o1    a1 -> o2      action[t] led to image[t]
    reward     0           r(a0)       r(a1)         reward[t] arrived with image[t]
    terminal   False       o1 is end?  ...           terminal[t]: image[t] is a game-over state
    reset      True        False       False         reset[t]: the state is zeroed before row t

A file boundary inside a window sets `reset` on the first row of the new file (a mid-sequence
reset), and a random extra reset is added about every `reset_interval` rows so that the model
also learns to start from a blank state in the middle of an episode.
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from pydreamer.artifacts import ArtifactFolder
from pydreamer.episodes import CorruptEpisodeError, EpisodeFile, load_episode, select_newest

log = logging.getLogger(__name__)


class EpisodeIndex:
    """The newest `buffer_size` steps of a run's episode folder (e.g. `episodes`), by listing only.

    Files are downloaded on first use into a local cache; a file that fails to load is reported
    once by name and never chosen again.
    """

    def __init__(self, run_id: str, folder: str, buffer_size: int, listing_interval: float,
                 cache_dir: str | None = None):
        self.run_id = run_id
        self.folder = folder
        self.buffer_size = buffer_size
        self.listing_interval = listing_interval
        self._root = ArtifactFolder(run_id, folder)
        self._tmp = None if cache_dir else tempfile.TemporaryDirectory(prefix='pydreamer-cache-')
        self.cache_dir = Path(cache_dir or self._tmp.name)
        self.files: list[tuple[str, EpisodeFile]] = []
        self.bad: set[str] = set()
        self.total_steps = 0  # every listed file, also those beyond buffer_size
        self._listed_at = -float('inf')

    def refresh(self, force: bool = False) -> None:
        if not force and time.time() - self._listed_at < self.listing_interval:
            return
        listed = []
        for sub in self._root.list_subfolders():
            listed += ArtifactFolder(self.run_id, sub).list()
        self.files = [f for f in select_newest(listed, self.buffer_size) if f[0] not in self.bad]
        self.total_steps = sum(f.steps for _, f in listed)
        self._listed_at = time.time()

    @property
    def steps(self) -> int:
        return sum(f.steps for _, f in self.files)

    def load(self, artifact_path: str) -> dict | None:
        local = self.cache_dir / artifact_path
        try:
            if not local.exists():
                local.parent.mkdir(parents=True, exist_ok=True)
                self._root.download(artifact_path, str(local.parent))
            return load_episode(local, name=f'runs:/{self.run_id}/{artifact_path}')
        except CorruptEpisodeError as e:
            log.warning('Skipping episode file: %s', e)
            self.bad.add(artifact_path)
            self.files = [f for f in self.files if f[0] != artifact_path]
            return None

    def close(self) -> None:
        if self._tmp:
            self._tmp.cleanup()


class _Stream:
    def __init__(self, index: EpisodeIndex, rng: np.random.Generator):
        self.index = index
        self.rng = rng
        self.data: dict | None = None
        self.pos = 0
        self.first = True

    def _next_file(self) -> None:
        for _ in range(100):
            if not self.index.files:
                raise RuntimeError(f'No readable episode files in {self.index.folder}/ of run {self.index.run_id}.')
            path, _ = self.index.files[self.rng.integers(len(self.index.files))]
            data = self.index.load(path)
            if data is not None and len(data['reset']) > 0:
                break
        else:
            raise RuntimeError(f'Could not load any episode file from {self.index.folder}/ of run {self.index.run_id}.')
        self.data = data
        self.pos = int(self.rng.integers(len(data['reset']))) if self.first else 0
        self.first = False

    def window(self, length: int, allow_mid_reset: bool) -> dict:
        parts = []
        need = length
        cuts = 0
        while need > 0:
            if self.data is None or self.pos >= len(self.data['reset']):
                self._next_file()
                fresh_file = True
            else:
                fresh_file = False
            available = len(self.data['reset']) - self.pos
            if not allow_mid_reset and available < need:
                # the window would span two files: cut it here and take it whole from another file
                cuts += 1
                if cuts > 100:
                    raise RuntimeError(f'No episode file in {self.index.folder}/ of run {self.index.run_id} holds a '
                                       f'window of {length} rows; allow_mid_reset: true lets windows span files.')
                self.data = None
                continue
            take = min(need, available)
            part = {k: v[self.pos:self.pos + take] for k, v in self.data.items()}
            if fresh_file:
                part['reset'] = part['reset'].copy()
                part['reset'][0] = True  # the state carried so far belongs to another file
            parts.append(part)
            self.pos += take
            need -= take
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class BatchStream:
    """Yields time-major numpy batches `(T, B, ...)` from B streams over an EpisodeIndex."""

    def __init__(self, index: EpisodeIndex, batch_size: int, batch_length: int, reset_interval: int,
                 allow_mid_reset: bool, seed: int):
        self.index = index
        self.batch_length = batch_length
        self.reset_interval = reset_interval
        self.allow_mid_reset = allow_mid_reset
        self.rng = np.random.default_rng(seed)
        self.streams = [_Stream(index, np.random.default_rng(self.rng.integers(2 ** 63))) for _ in range(batch_size)]

    def next(self) -> dict[str, np.ndarray]:
        self.index.refresh()
        windows = [s.window(self.batch_length, self.allow_mid_reset) for s in self.streams]
        keys = set.intersection(*(set(w) for w in windows))
        batch = {k: np.stack([w[k] for w in windows], axis=1) for k in sorted(keys)}  # (T, B, ...)
        if self.reset_interval > 0:
            extra = self.rng.random(len(self.streams)) < self.batch_length / self.reset_interval
            batch['reset'] = batch['reset'].copy()
            batch['reset'][0] |= extra
        return batch
