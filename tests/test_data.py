"""The learner's batches (pydreamer.data): streams that continue each other across batches, resets
at file boundaries, random extra resets, cut windows without mid-sequence resets, and files that
appear while the learner runs. Episode files are written by the project's own chunker and
writer into a real mlflow run on the local store.

Every stored row carries a unique id (its vecobs), so a batch tells exactly which row of which
file each of its cells came from.
"""
from __future__ import annotations

import numpy as np
import pytest

from pydreamer.episodes import EpisodeChunker, save_episode

T = 6  # window length of every test


def _new_run_id() -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient().create_run(experiment_id='0').info.run_id


class Store:
    """Episode files of one worker folder of a run, and where every row id sits in them."""

    def __init__(self, run_id: str, local_dir):
        self.run_id = run_id
        self.local_dir = local_dir
        self.file_of: dict[int, str] = {}  # row id -> file name
        self.pos_of: dict[int, int] = {}   # row id -> row index in its file
        self.length: dict[str, int] = {}   # file name -> rows
        self.stored_reset: dict[int, bool] = {}
        self._next_id = 0
        self._next_episode = 0

    def write(self, episode_lengths: list[int], worker: int = 0, min_steps: int = 8) -> list[str]:
        """Play episodes of these lengths through the chunker, store its files, return their names."""
        from pydreamer.artifacts import ArtifactFolder

        chunker = EpisodeChunker(min_steps)
        files = []
        for length in episode_lengths:
            for t in range(length):
                action = np.zeros(3, np.float32)
                if t > 0:
                    action[t % 3] = 1
                row = {'vecobs': np.array([self._next_id], np.float32), 'action': action,
                       'reward': np.float32(0), 'terminal': t == length - 1, 'reset': t == 0}
                self._next_id += 1
                files += chunker.add(row, self._next_episode, done=t == length - 1)
            self._next_episode += 1
        files += chunker.flush()
        folder = ArtifactFolder(self.run_id, f'episodes/{worker}')
        names = []
        for name, data in files:
            path = self.local_dir / name.name
            save_episode(path, data)
            folder.upload(path)
            for pos, (row_id, reset) in enumerate(zip(data['vecobs'][:, 0].astype(int), data['reset'])):
                self.file_of[row_id], self.pos_of[row_id] = name.name, pos
                self.stored_reset[row_id] = bool(reset)
            self.length[name.name] = len(data['reset'])
            names.append(name.name)
        return names

    def index(self, listing_interval: float = 3600):
        from pydreamer.data import EpisodeIndex

        index = EpisodeIndex(self.run_id, 'episodes', buffer_size=10 ** 6, listing_interval=listing_interval,
                             cache_dir=str(self.local_dir / 'cache'))
        index.refresh(force=True)
        return index


@pytest.fixture
def store(mlflow_local, tmp_path):
    local = tmp_path / 'files'
    local.mkdir()
    return Store(_new_run_id(), local)


def _rows(batches: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Row ids and resets of each stream over consecutive batches: (N·T, B) each."""
    ids = np.concatenate([b['vecobs'][..., 0] for b in batches]).astype(int)
    resets = np.concatenate([b['reset'] for b in batches])
    return ids, resets


def _fresh(store: Store, ids: np.ndarray) -> np.ndarray:
    """(N·T, B): the row does not continue the stream's previous row in the same file."""
    fresh = np.ones(ids.shape, bool)
    for t in range(1, len(ids)):
        for b in range(ids.shape[1]):
            prev, cur = ids[t - 1, b], ids[t, b]
            fresh[t, b] = not (store.file_of[cur] == store.file_of[prev] and store.pos_of[cur] == store.pos_of[prev] + 1)
    return fresh


def test_streams_continue_across_batches_and_reset_at_file_boundaries(store):
    """Each stream walks a file row for row, across batch boundaries, to its last row, then
    starts another file at its first row with `reset` set there, even where the new file is a
    later chunk of a long episode (stored reset false); stored resets of packed episodes stay."""
    from pydreamer.data import BatchStream

    store.write([3, 4, 2, 25, 5, 4])  # packed short episodes, and a long one cut into chunks of 8-15 rows
    index = store.index()
    batches = BatchStream(index, batch_size=3, batch_length=T, reset_interval=0, allow_mid_reset=True, seed=1)
    ids, resets = _rows([batches.next() for _ in range(12)])
    fresh = _fresh(store, ids)
    for t, b in zip(*np.nonzero(fresh[1:])):
        cur, prev = ids[t + 1, b], ids[t, b]
        assert store.pos_of[cur] == 0, (t + 1, b)  # a new file is read from its start ...
        assert store.pos_of[prev] == store.length[store.file_of[prev]] - 1, (t + 1, b)  # ... after the last one ended
    expected = fresh | np.vectorize(store.stored_reset.get)(ids)
    np.testing.assert_array_equal(resets, expected)
    # the cases this test is about did occur
    chunk_starts = {i for i in store.file_of if store.pos_of[i] == 0 and not store.stored_reset[i]}
    assert np.isin(ids[1:][fresh[1:]], list(chunk_starts)).any()             # a file boundary inside a chunked episode
    assert (fresh[1:] & (np.arange(1, len(ids)) % T != 0)[:, None]).any()    # a file boundary inside a window
    assert (~fresh[T::T]).sum() >= 10                                        # windows continued by the next batch
    assert [store.pos_of[i] for i in ids[0]] != [0, 0, 0]                    # the first files start at random offsets
    index.close()


def test_extra_resets_come_on_first_rows_about_every_reset_interval_rows(store):
    from pydreamer.data import BatchStream

    store.write([200, 200], min_steps=100)
    index = store.index()
    B, N, interval = 4, 60, 4 * T
    batches = BatchStream(index, batch_size=B, batch_length=T, reset_interval=interval, allow_mid_reset=True, seed=2)
    ids, resets = _rows([batches.next() for _ in range(N)])
    explained = _fresh(store, ids) | np.vectorize(store.stored_reset.get)(ids)
    assert not (explained & ~resets).any()                   # no reset of the data is lost
    extra = resets & ~explained
    assert not extra.reshape(N, T, B)[:, 1:].any()           # extra resets only start a window
    rate = extra.reshape(N, T, B)[:, 0].mean()
    assert 0.15 < rate < 0.35, rate                          # T / reset_interval = 0.25 of the windows
    index.close()


def test_without_mid_reset_a_window_never_spans_two_files(store):
    """allow_mid_reset false: a window whose file has fewer rows left than the window needs is cut
    there; the stream goes on in another file, from its start."""
    from pydreamer.data import BatchStream

    store.write([9, 11, 10, 13])
    index = store.index()
    batches = BatchStream(index, batch_size=3, batch_length=T, reset_interval=0, allow_mid_reset=False, seed=3)
    ids, resets = _rows([batches.next() for _ in range(12)])
    fresh = _fresh(store, ids)
    window_starts = np.arange(len(ids)) % T == 0
    assert not fresh[~window_starts].any()                   # inside a window: one file, row for row
    np.testing.assert_array_equal(resets, fresh | np.vectorize(store.stored_reset.get)(ids))
    cuts = 0
    for t, b in zip(*np.nonzero(fresh[T:])):
        prev, cur = ids[T + t - 1, b], ids[T + t, b]
        left = store.length[store.file_of[prev]] - 1 - store.pos_of[prev]
        assert left < T and store.pos_of[cur] == 0, (T + t, b)
        cuts += left > 0
    assert cuts >= 3                                         # rows were left unread at the end of a file
    index.close()


def test_files_written_after_the_start_are_sampled_after_a_relisting(store):
    from pydreamer.data import BatchStream

    first = store.write([10, 10])
    index = store.index(listing_interval=0)  # re-list before every batch
    batches = BatchStream(index, batch_size=3, batch_length=T, reset_interval=0, allow_mid_reset=True, seed=4)
    ids, _ = _rows([batches.next() for _ in range(3)])
    assert {store.file_of[i] for i in ids.flat} <= set(first)
    later = store.write([10, 10], worker=1)
    ids, _ = _rows([batches.next() for _ in range(8)])
    assert {store.file_of[i] for i in ids.flat} & set(later)
    index.close()

    slow = store.index(listing_interval=3600)
    store.write([10, 10], worker=2)
    batches = BatchStream(slow, batch_size=3, batch_length=T, reset_interval=0, allow_mid_reset=True, seed=4)
    ids, _ = _rows([batches.next() for _ in range(8)])
    assert {store.file_of[i] for i in ids.flat} <= set(first) | set(later)  # not re-listed yet
    slow.close()
