"""Episode files (names, storage, chunking, selection) and artifact folders on both mlflow stores."""
from __future__ import annotations

import errno
import io
import logging
import os
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pydreamer.episodes import (
    CorruptEpisodeError,
    EpisodeChunker,
    EpisodeFile,
    load_episode,
    resume_point,
    save_episode,
    select_newest,
    stored_bytes_per_step,
)

MINATAR_BYTES_PER_STEP_TARGET = 12


# --- episode builders --------------------------------------------------------------------------

def _rows(length: int, image_shape: tuple, n_actions: int, rng, env_id: int | None = None) -> list[dict]:
    """Rows of one synthetic episode: reset row first, one-hot actions, a final terminal."""
    rows = []
    for t in range(length):
        action = np.zeros(n_actions, np.float32)
        if t > 0:
            action[rng.integers(n_actions)] = 1
        row = dict(image=rng.integers(0, 255, image_shape, dtype=np.uint8), action=action,
                   reward=float(rng.integers(-1, 2)) if t > 0 else 0.0,
                   terminal=t == length - 1, reset=t == 0,
                   vecobs=rng.normal(size=3).astype(np.float32))
        if env_id is not None:
            row['env_id'] = env_id
        rows.append(row)
    return rows


def _stack(rows: list[dict]) -> dict:
    data = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    data['reward'] = data['reward'].astype(np.float32)
    return data


def minatar_episodes(game: str, min_steps: int, seed: int = 0) -> dict:
    """Real MinAtar episodes under a random policy, concatenated: >= min_steps rows of the stored
    format (categorical 10x10 map, 6-action one-hot, reward, terminal, reset)."""
    from minatar import Environment

    env = Environment(game, sticky_action_prob=0.1, difficulty_ramping=True)
    env.seed(seed)
    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < min_steps:
        env.reset()
        terminal = False
        action = None
        while True:
            state = env.state()
            onehot = np.zeros(6, np.float32)
            if action is not None:
                onehot[action] = 1
            rows.append(dict(image=np.where(state.any(-1), 1 + state.argmax(-1), 0).astype(np.uint8),
                             action=onehot, reward=reward if action is not None else 0.0,
                             terminal=terminal, reset=action is None))
            if terminal or len(rows) >= 2 * min_steps:
                break
            action = int(rng.integers(6))
            reward, terminal = env.act(action)
    return _stack(rows)


def _assert_equal_episodes(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# --- names -------------------------------------------------------------------------------------

def test_names_round_trip_and_reject_others():
    f = EpisodeFile(ep_from=3, ep_to=7, chunk=2, reward=-21.0, steps=1234)
    assert f.name == 'ep000003_000007-2-r-21-1234.npz'
    assert EpisodeFile.parse(f.name) == f
    assert EpisodeFile.parse(f'episodes/0/{f.name}') == f
    assert EpisodeFile.parse('ep000003_000003-r12-1000.npz') == EpisodeFile(3, 3, 0, 12.0, 1000)
    assert EpisodeFile.parse('ep000010_000012-0-r0-0999.npz').steps == 999
    for other in ['', 'latest.pt', 'config.yaml', 'ep.npz', 'ep000001_000002-0-r1.5-1000.npz',
                  'ep000001_000002-0-r1-1000.npz.tmp', '.ep000001_000002-0-r1-1000.npz.3f2a.tmp',
                  'xep000001_000002-0-r1-1000.npz', 'ep000001_000002-0-r1-1000.npzx']:
        assert EpisodeFile.parse(other) is None, other


# --- storage -----------------------------------------------------------------------------------

@pytest.mark.parametrize('image_shape', [(10, 10), (64, 64, 3)], ids=['minatar', 'atari'])
def test_save_load_round_trip(tmp_path, image_shape):
    rng = np.random.default_rng(0)
    data = _stack(_rows(50, image_shape, 6, rng, env_id=2) + _rows(30, image_shape, 6, rng, env_id=0))
    path = tmp_path / EpisodeFile(0, 1, 0, float(data['reward'].sum()), 80).name
    save_episode(path, data)
    assert os.listdir(tmp_path) == [path.name]  # no temporary file is left behind
    _assert_equal_episodes(load_episode(path), data)


def test_load_plain_and_non_binary_actions(tmp_path):
    rng = np.random.default_rng(1)
    data = _stack(_rows(20, (10, 10), 4, rng))
    np.savez_compressed(tmp_path / 'plain.npz', **data)  # time-first image, float32 one-hot action
    _assert_equal_episodes(load_episode(tmp_path / 'plain.npz'), data)
    data['action'] = rng.normal(size=data['action'].shape).astype(np.float32)  # stored as is
    save_episode(tmp_path / 'continuous.npz', data)
    _assert_equal_episodes(load_episode(tmp_path / 'continuous.npz'), data)


def test_save_refuses_invalid_data(tmp_path):
    data = _stack(_rows(10, (10, 10), 6, np.random.default_rng(2)))
    with pytest.raises(ValueError, match='lacks the keys'):
        save_episode(tmp_path / 'a.npz', {k: v for k, v in data.items() if k != 'reward'})
    with pytest.raises(ValueError, match='unequal lengths'):
        save_episode(tmp_path / 'a.npz', dict(data, terminal=data['terminal'][:5]))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('game', ['breakout', 'space_invaders', 'seaquest'])
def test_minatar_bytes_per_step(game):
    data = minatar_episodes(game, 1000)
    stored = stored_bytes_per_step(data)
    plain = _plain_npz_bytes(data) / len(data['reward'])
    print(f'MinAtar {game}: {stored:.2f} bytes per stored step ({plain:.2f} as a plain npz of the '
          f'in-memory arrays), {len(data["reward"])} steps in {int(data["reset"].sum())} episodes')
    assert stored <= MINATAR_BYTES_PER_STEP_TARGET
    assert stored < plain


def _plain_npz_bytes(data: dict) -> int:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **data)
    return len(buffer.getvalue())


# --- corrupt files -----------------------------------------------------------------------------

def test_the_learner_skips_corrupt_files_once_with_a_warning(mlflow_local, tmp_path, caplog):
    """EpisodeIndex, which the learner's batches read through, warns once per corrupt file and
    never lists it again; whole files load as written."""
    from pydreamer.artifacts import ArtifactFolder
    from pydreamer.data import EpisodeIndex

    run_id = _new_run_id()
    folder = ArtifactFolder(run_id, 'episodes/0')
    rng = np.random.default_rng(3)
    local, good = tmp_path / 'src', {}
    local.mkdir()
    for i in range(2):
        path = local / EpisodeFile(i, i, 0, 0, 40).name
        good[path.name] = _stack(_rows(40, (10, 10), 6, rng))
        save_episode(path, good[path.name])
    truncated = (local / EpisodeFile(0, 0, 0, 0, 40).name).read_bytes()[:-100]
    (local / EpisodeFile(2, 2, 0, 0, 40).name).write_bytes(truncated)
    (local / EpisodeFile(3, 3, 0, 0, 40).name).write_bytes(b'not an episode at all')
    for path in sorted(local.iterdir()):
        folder.upload(path)
    index = EpisodeIndex(run_id, 'episodes', buffer_size=10**6, listing_interval=0, cache_dir=tmp_path / 'cache')
    index.refresh(force=True)
    assert len(index.files) == 4
    with caplog.at_level(logging.WARNING, logger='pydreamer.data'):
        loaded = {path.split('/')[-1]: index.load(path) for path, _ in sorted(index.files)}
    assert {name for name, data in loaded.items() if data is not None} == set(good)
    for name, data in good.items():
        _assert_equal_episodes(loaded[name], data)
    corrupt = sorted(set(loaded) - set(good))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(name in w for name, w in zip(corrupt, warnings))
    assert sorted(p.split('/')[-1] for p in index.bad) == corrupt
    index.refresh(force=True)  # a corrupt file is never chosen again
    assert sorted(p.split('/')[-1] for p, _ in index.files) == sorted(good)
    index.close()


def test_invalid_archives_are_corrupt_and_missing_files_are_not(tmp_path):
    data = _stack(_rows(10, (10, 10), 6, np.random.default_rng(4)))
    np.savez_compressed(tmp_path / 'no_reward.npz', **{k: v for k, v in data.items() if k != 'reward'})
    np.savez_compressed(tmp_path / 'unequal.npz', **dict(data, reset=data['reset'][:3]))
    np.save(tmp_path / 'array.npy', data['reward'])
    for name, match in [('no_reward.npz', 'lacks the keys'), ('unequal.npz', 'unequal lengths'),
                        ('array.npy', 'not an npz archive')]:
        with pytest.raises(CorruptEpisodeError, match=match):
            load_episode(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        load_episode(tmp_path / 'missing.npz')


# --- chunking ----------------------------------------------------------------------------------

def _stream(lengths: list[int], rng, first_episode: int = 0):
    """(row, episode index, done) for episodes of the given lengths; vecobs marks (episode, t)."""
    for i, length in enumerate(lengths):
        episode = first_episode + i
        for t, row in enumerate(_rows(length, (2, 2), 3, rng)):
            row['vecobs'] = np.array([episode, t], np.float32)
            yield row, episode, t == length - 1


def _check_files(files, rows_in, min_steps: int, last_may_be_short: bool) -> None:
    """Files hold the input rows in order, are named after what they hold, and are 1x-2x min_steps."""
    for i, (f, data) in enumerate(files):
        n = len(data['reward'])
        assert f.steps == n
        assert f.ep_from == data['vecobs'][0, 0] and f.ep_to == data['vecobs'][-1, 0]
        assert f.reward == pytest.approx(data['reward'].sum())
        assert f.name == EpisodeFile.parse(f.name).name
        if not (last_may_be_short and i == len(files) - 1):
            assert min_steps <= n < 2 * min_steps, f
    stored = np.concatenate([d['vecobs'] for _, d in files])
    np.testing.assert_array_equal(stored, np.stack([r['vecobs'] for r in rows_in]))


def _feed(chunker: EpisodeChunker, stream, use_done: bool = True):
    files, rows = [], []
    for row, episode, done in stream:
        rows.append(row)
        files += chunker.add(row, episode, done=done and use_done)
    return files, rows


def test_chunker_packs_short_episodes():
    chunker = EpisodeChunker(min_steps=1000)
    files, rows = _feed(chunker, _stream([300, 400, 500, 200], np.random.default_rng(5)))
    assert [f for f, _ in files] == [EpisodeFile(0, 2, 0, files[0][0].reward, 1200)]
    files += chunker.flush()
    assert chunker.flush() == []
    assert files[1][0].ep_from == files[1][0].ep_to == 3 and files[1][0].steps == 200
    _check_files(files, rows, 1000, last_may_be_short=True)
    assert files[0][1]['action'].dtype == np.float32 and files[0][1]['reset'].dtype == bool


def test_chunker_cuts_long_episodes_into_increasing_chunks():
    chunker = EpisodeChunker(min_steps=1000)
    files, rows = _feed(chunker, _stream([4500], np.random.default_rng(6)))
    assert [(f.ep_from, f.ep_to, f.chunk, f.steps) for f, _ in files] == [
        (0, 0, 0, 1000), (0, 0, 1, 1000), (0, 0, 2, 1000), (0, 0, 3, 1500)]
    _check_files(files, rows, 1000, last_may_be_short=False)


@pytest.mark.parametrize('use_done', [True, False], ids=['done', 'next-reset'])
def test_chunker_random_lengths(use_done):
    """Any mix of short and long episodes; without `done`, an episode ends at the next reset."""
    rng = np.random.default_rng(7)
    lengths = list(rng.integers(1, 300, 40)) + [2700] + list(rng.integers(1, 300, 10)) + [1999, 2000, 1]
    chunker = EpisodeChunker(min_steps=250)
    files, rows = _feed(chunker, _stream(lengths, rng), use_done=use_done)
    files += chunker.flush()
    _check_files(files, rows, 250, last_may_be_short=True)
    chunks = {}
    for f, _ in files:  # the chunks of one episode count up from 0
        if f.ep_from == f.ep_to and f.ep_to in chunks:
            assert f.chunk == chunks[f.ep_to] + 1
        chunks[f.ep_to] = f.chunk


def test_chunker_flush_and_resume():
    rng = np.random.default_rng(8)
    chunker = EpisodeChunker(min_steps=100)
    files, _ = _feed(chunker, _stream([150, 60, 70], rng))
    for row, episode, _ in _stream([30], rng, first_episode=3):  # the generator stops mid-episode
        files += chunker.add(row, episode)
    files += chunker.flush()
    assert [(f.ep_from, f.ep_to, f.steps) for f, _ in files] == [(0, 0, 150), (1, 2, 130), (3, 3, 30)]
    next_episode, steps = resume_point(f for f, _ in files)
    assert (next_episode, steps) == (4, 310)
    assert resume_point([]) == (0, 0)
    resumed = EpisodeChunker(min_steps=100)
    more, _ = _feed(resumed, _stream([120], rng, first_episode=next_episode))
    assert [(f.ep_from, f.ep_to, f.chunk) for f, _ in more] == [(4, 4, 0)]


def test_chunker_refuses_out_of_order_steps():
    rows = _rows(3, (2, 2), 3, np.random.default_rng(9))
    with pytest.raises(ValueError, match='before its reset row'):
        EpisodeChunker().add(rows[1], 0)
    chunker = EpisodeChunker()
    chunker.add(rows[0], 5)
    with pytest.raises(ValueError, match='during episode 5'):
        chunker.add(rows[1], 6)
    with pytest.raises(ValueError, match='does not follow episode 5'):
        chunker.add(rows[0], 5)


# --- selection ---------------------------------------------------------------------------------

def test_select_newest_interleaves_workers_within_buffer_size(tmp_path):
    # Paths in folders that do not exist: selection must work from the names alone.
    files = [(f'{tmp_path}/missing/0/{EpisodeFile(i, i, 0, 0, 1000).name}', EpisodeFile(i, i, 0, 0, 1000))
             for i in range(10)]
    files += [(f'{tmp_path}/missing/1/{EpisodeFile(i, i, c, 0, 1500).name}', EpisodeFile(i, i, c, 0, 1500))
              for i in range(500, 503) for c in range(2)]
    selected = select_newest(files, buffer_size=6000)
    assert sum(f.steps for _, f in selected) <= 6000
    assert [(p.split('/')[-2], f.ep_to, f.chunk) for p, f in selected] == [
        ('0', 9, 0), ('1', 502, 1), ('0', 8, 0), ('1', 502, 0), ('0', 7, 0)]
    assert len(select_newest(files, buffer_size=10**9)) == len(files)
    assert select_newest(files, buffer_size=10) == [selected[0]]  # always at least the newest file
    assert select_newest([], buffer_size=10) == []


# --- artifact folders on the local store and on a server --------------------------------------

@pytest.fixture(params=['mlflow_local', 'mlflow_remote'], ids=['local', 'server'])
def tracking_uri(request) -> str:
    return request.getfixturevalue(request.param)


def _new_run_id() -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient().create_run(experiment_id='0').info.run_id


def test_artifact_folder_episode_round_trip(tracking_uri, tmp_path):
    from pydreamer.artifacts import ArtifactFolder

    run_id = _new_run_id()
    folder = ArtifactFolder(run_id, 'episodes/0')
    assert folder.list() == [] and ArtifactFolder(run_id, 'episodes').list_subfolders() == []

    rng = np.random.default_rng(10)
    chunker = EpisodeChunker(min_steps=50)
    files, _ = _feed(chunker, _stream([30, 40, 120], rng))
    local = tmp_path / 'out'
    local.mkdir()
    originals = {}
    for f, data in files:
        save_episode(local / f.name, data)
        assert folder.upload(local / f.name) == f'episodes/0/{f.name}'
        originals[f'episodes/0/{f.name}'] = data
    (local / 'notes.txt').write_text('not an episode')
    folder.upload(local / 'notes.txt')
    broken = EpisodeFile(9, 9, 0, 0, 50).name
    (local / broken).write_bytes((local / files[0][0].name).read_bytes()[:200])
    ArtifactFolder(run_id, 'episodes/1').upload(local / broken)

    listed = folder.list()
    assert sorted(p for p, _ in listed) == sorted(originals)
    assert all(EpisodeFile.parse(p) == f for p, f in listed)
    assert ArtifactFolder(run_id, 'episodes').list_subfolders() == ['episodes/0', 'episodes/1']

    dst = tmp_path / 'downloaded'
    paths = [folder.download(p, dst) for p in sorted(originals)]
    assert sorted(os.listdir(dst)) == sorted(os.path.basename(p) for p in originals)
    for (_, data), path in zip(sorted(originals.items()), paths):
        _assert_equal_episodes(load_episode(path), data)

    bad = ArtifactFolder(run_id, 'episodes/1').download(f'episodes/1/{broken}', dst)
    with pytest.raises(CorruptEpisodeError, match=broken):
        load_episode(bad)
    with pytest.raises(ValueError, match='not inside folder episodes/0'):
        folder.download(f'episodes/1/{broken}', dst)

    if tracking_uri.startswith('sqlite'):  # the local store lives in the test's folder
        artifact_dir = tmp_path / 'mlruns' / '0' / run_id / 'artifacts' / 'episodes' / '0'
        assert sorted(os.listdir(artifact_dir)) == sorted([f.name for f, _ in files] + ['notes.txt'])


def test_artifact_folder_single_files(tracking_uri, tmp_path):
    from pydreamer.artifacts import ArtifactFolder

    run_id = _new_run_id()
    folder = ArtifactFolder(run_id, 'checkpoints')
    assert not folder.exists('checkpoints/latest.pt')
    with pytest.raises(FileNotFoundError, match='checkpoints/latest.pt'):
        folder.download_file('checkpoints/latest.pt', tmp_path / 'dl')
    src = tmp_path / 'src'
    src.mkdir()
    for content in [b'first checkpoint', b'second, longer checkpoint']:
        (src / 'latest.pt').write_bytes(content)
        assert folder.upload_file(src / 'latest.pt', 'checkpoints') == 'checkpoints/latest.pt'
        assert folder.exists('checkpoints/latest.pt') and not folder.exists('checkpoints')
        path = folder.download_file('checkpoints/latest.pt', tmp_path / 'dl')
        assert open(path, 'rb').read() == content
        assert os.listdir(tmp_path / 'dl') == ['latest.pt']  # no temporary download folder left
    with pytest.raises(IsADirectoryError):
        ArtifactFolder(run_id).download_file('checkpoints', tmp_path / 'dl')


def test_readers_never_see_partial_uploads(tracking_uri, tmp_path, request):
    """An upload held halfway is written to a hidden staging file in the destination folder, never
    under its final name, and a reader lists nothing; once finished, the staging file has been
    renamed onto the final name and the reader gets the file whole.

    The upload reads from a named pipe that this test fills, and the test looks into the folder on
    disk where the store keeps the run's artifacts. When the first half has been written, the
    uploader has consumed most of it (a pipe buffers at most 64 KiB), so the local store's copy is
    under way; to a server it has sent part of the request body, and the test waits for the server
    to open its staging file (well under a second; the 30 s limit only ends a broken upload).
    """
    from urllib.parse import urlparse

    from pydreamer.artifacts import STAGING_PREFIX, ArtifactFolder, _repository

    run_id = _new_run_id()
    name = EpisodeFile(0, 0, 0, 0, 100).name
    data = _stack(_rows(100, (64, 64, 3), 18, np.random.default_rng(11)))
    save_episode(tmp_path / name, data)
    payload = (tmp_path / name).read_bytes()  # ~1.2 MB of incompressible images
    pipe = tmp_path / 'pipe' / name
    pipe.parent.mkdir()
    os.mkfifo(pipe)
    if tracking_uri.startswith('sqlite'):
        folder_on_disk = Path(_repository(tracking_uri, run_id).artifact_dir) / 'episodes' / '0'
    else:  # mlflow-artifacts:/<experiment>/<run>/artifacts, under the server's --artifacts-destination
        from mlflow.tracking import MlflowClient

        run_root = urlparse(MlflowClient().get_run(run_id).info.artifact_uri).path.strip('/')
        folder_on_disk = request.getfixturevalue('mlflow_server_root') / 'artifacts' / run_root / 'episodes' / '0'
    errors = []

    def upload():
        try:
            ArtifactFolder(run_id, 'episodes/0').upload(pipe)
        except Exception as e:  # reported by the test below
            errors.append(e)

    def on_disk() -> list[str]:
        return sorted(os.listdir(folder_on_disk)) if folder_on_disk.is_dir() else []

    uploader = threading.Thread(target=upload)
    uploader.start()
    reader = ArtifactFolder(run_id, 'episodes/0')
    fd = _open_pipe_for_writing(pipe, uploader)
    assert fd is not None, errors
    try:
        with open(fd, 'wb') as w:
            w.write(payload[:len(payload) // 2])
            w.flush()
            deadline = time.monotonic() + 30
            while not on_disk() and uploader.is_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(on_disk()) == 1 and on_disk()[0].startswith(STAGING_PREFIX), (on_disk(), errors)
            assert reader.list() == []
            w.write(payload[len(payload) // 2:])
    finally:
        uploader.join(60)
    assert not uploader.is_alive() and not errors
    assert on_disk() == [name]
    assert [EpisodeFile.parse(p) for p, _ in reader.list()] == [EpisodeFile.parse(name)]
    _assert_equal_episodes(load_episode(reader.download(f'episodes/0/{name}', tmp_path / 'dl')), data)


def _open_pipe_for_writing(pipe, reader_thread, timeout=120) -> int | None:
    """A blocking write descriptor of `pipe` once `reader_thread` has opened it for reading, or
    None if that thread ended first (a plain open would then wait forever)."""
    deadline = time.monotonic() + timeout
    while reader_thread.is_alive() and time.monotonic() < deadline:
        try:
            fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: nobody has the pipe open for reading yet
                raise
            time.sleep(0.01)
            continue
        os.set_blocking(fd, True)
        return fd
    return None


def test_errors_other_than_missing_propagate(mlflow_local, monkeypatch):
    """An unreachable server is an error, never "no checkpoint yet" (upstream issue #10)."""
    from mlflow.exceptions import MlflowException

    from pydreamer.artifacts import ArtifactFolder

    run_id = _new_run_id()
    monkeypatch.setenv('MLFLOW_TRACKING_URI', 'http://127.0.0.1:9')  # nothing listens on port 9
    monkeypatch.setenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '0')
    folder = ArtifactFolder(run_id, 'checkpoints')
    with pytest.raises(MlflowException):
        folder.exists('checkpoints/latest.pt')
    with pytest.raises(MlflowException):
        folder.download_file('checkpoints/latest.pt', os.getcwd())


def test_local_staging_files_are_hidden_from_mlflow_listings():
    from mlflow.store.artifact import local_artifact_repo

    from pydreamer.artifacts import STAGING_PREFIX

    assert STAGING_PREFIX == local_artifact_repo._TEMP_ARTIFACT_PREFIX


def test_episode_files_are_plain_npz(tmp_path):
    """Any numpy can read a stored file; the stored keys are the documented ones."""
    data = _stack(_rows(5, (64, 64, 3), 18, np.random.default_rng(12), env_id=1))
    save_episode(tmp_path / 'e.npz', data)
    with zipfile.ZipFile(tmp_path / 'e.npz') as z:
        assert sorted(z.namelist()) == sorted(['image_t.npy', 'action_onehot.npy', 'reward.npy',
                                               'terminal.npy', 'reset.npy', 'vecobs.npy', 'env_id.npy'])
    with np.load(tmp_path / 'e.npz') as npz:
        assert npz['image_t'].shape == (64, 64, 3, 5) and npz['action_onehot'].dtype == bool
