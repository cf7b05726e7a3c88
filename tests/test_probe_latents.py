"""The latent probe: its measures on planted signals and hand-computed values, the object readout
against each MinAtar game's own state, and experiments/probe_latents.py end to end on a tiny
`debug` checkpoint."""
import csv
import logging

import gymnasium
import numpy as np
import pytest
import torch

from experiments import probe_latents
from pydreamer import probes, tracking
from pydreamer.checkpoint import save_checkpoint
from pydreamer.config import build_config
from pydreamer.envs import MINATAR_GAMES, make_env
from pydreamer.launching.cli import run_cli
from pydreamer.models.dreamer import Dreamer
from pydreamer.train_step import init_optimizers

torch.set_num_threads(1)


def _episodes_of(n: int, length: int) -> np.ndarray:
    return np.arange(n) // length


def test_the_probe_recovers_a_planted_linear_signal_and_not_a_shuffled_one():
    rng = np.random.default_rng(0)
    n = 4000
    position = rng.integers(0, 10, (n, 2)).astype(float)
    # 30 features that are linear in (x, y), 100 that are noise, all slightly noisy
    X = np.concatenate([position @ rng.normal(size=(2, 30)), rng.normal(size=(n, 100))], 1)
    X += 0.05 * rng.normal(size=X.shape)
    folds = probes.episode_folds(_episodes_of(n, 40), 5)
    assert np.all(probes.ridge_cv_r2(X, position, folds) > 0.99)
    shuffled = probes.ridge_cv_r2(X[rng.permutation(n)], position, folds)
    assert np.all(np.abs(shuffled) < 0.05)


def test_the_probe_is_scored_on_held_out_episodes():
    """Features that identify the episode (and nothing else) fit its positions perfectly in-sample;
    held out by episode they predict nothing."""
    rng = np.random.default_rng(1)
    episodes = _episodes_of(2000, 50)
    position = rng.normal(size=(40, 2))[episodes]                     # one position per episode
    X = np.eye(40)[episodes]
    assert np.all(probes.ridge_cv_r2(X, position, probes.episode_folds(episodes, 5)) < 0.05)


def test_folds_keep_episodes_whole_and_balance_frames():
    episodes = np.repeat(np.arange(12), [500, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40])
    folds = probes.episode_folds(episodes, 4)
    for e in range(12):
        assert len(set(folds[episodes == e])) == 1
    frames = np.bincount(folds)
    assert len(frames) == 4 and frames.max() == 500 and frames.min() >= 120


def test_pearson_matches_numpy_and_is_nan_for_a_constant():
    rng = np.random.default_rng(2)
    X = np.concatenate([rng.normal(size=(200, 3)), np.ones((200, 1))], 1)
    y = X[:, 0] + rng.normal(size=200)
    r = probes.pearson(X, y)
    assert np.allclose(r[:3], [np.corrcoef(X[:, i], y)[0, 1] for i in range(3)])
    assert np.isnan(r[3]) and np.all(np.isnan(probes.pearson(X, np.ones(200))))


def test_position_map_by_hand():
    grid = probes.position_map(np.array([1., 3., 5., 7.]), x=np.array([0, 0, 2, 1.2]), y=np.array([0, 0, 1, 1]), size=3)
    expected = np.array([[2, np.nan, np.nan], [np.nan, 7, 5], [np.nan] * 3])
    assert np.array_equal(np.isnan(grid), np.isnan(expected)) and np.allclose(grid[~np.isnan(grid)], [2, 7, 5])


def test_adjusted_rand_index_by_hand():
    # 4 frames: pairs agreeing in both = 0, rows 2, columns 2, expected 2·2/6 = 2/3, max 2 → (0 - 2/3) / (2 - 2/3)
    assert probes.adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    assert probes.adjusted_rand_index([0, 0, 1, 1, 2], [5, 5, 3, 3, 9]) == pytest.approx(1.0)
    # table [[2, 1], [0, 2]]: index 1 + 1 = 2, rows 3 + 1 = 4, columns 1 + 3 = 4, all pairs 10
    assert probes.adjusted_rand_index([0, 0, 0, 1, 1], [0, 0, 1, 1, 1]) == pytest.approx((2 - 1.6) / (4 - 1.6))


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(3)
    centres = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0]])
    label = np.repeat(np.arange(3), 100)
    X = centres[label] + rng.normal(size=(300, 3))
    assert probes.adjusted_rand_index(probes.kmeans(X, 3), label) == pytest.approx(1.0)


def test_cca_is_one_for_a_rotation_and_small_for_independent_features():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(3000, 30)) * np.linspace(3, 0.5, 30)
    rotation = np.linalg.qr(rng.normal(size=(30, 30)))[0]
    assert np.allclose(probes.cca(X, 2 * X @ rotation + 1, dims=10), 1)
    assert probes.cca(X, rng.normal(size=(3000, 30)), dims=10).max() < 0.15


def test_pca_orders_components_by_variance():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(2000, 3)) * [5, 1, 0.1]
    scores, explained = probes.pca(X, 2)
    assert scores.shape == (2000, 2) and explained[0] > 0.9 and explained[0] > explained[1]
    assert np.allclose(np.abs(np.corrcoef(scores[:, 0], X[:, 0])[0, 1]), 1, atol=1e-3)


# --- the object readout against each game's own state

def _cells(points) -> tuple[float, float]:
    """The centroid (x, y) of distinct grid cells, or nan when there are none."""
    cells = {(int(x), int(y)) for x, y in points}
    return tuple(np.mean(list(cells), 0)) if cells else (np.nan, np.nan)


def _from_game(game: str, g) -> dict[str, tuple[float, float]]:
    """Object positions computed from the game's attributes, not from its state channels."""
    if game == 'Asterix':
        return {'player': (g.player_x, g.player_y),
                'enemy': _cells(e[:2] for e in g.entities if e is not None and not e[3]),
                'gold': _cells(e[:2] for e in g.entities if e is not None and e[3])}
    if game == 'Breakout':
        return {'player': (g.pos, 9), 'ball': (g.ball_x, g.ball_y)}
    if game == 'Freeway':
        return {'player': (4, g.pos), 'car': _cells(c[:2] for c in g.cars)}
    if game == 'Seaquest':
        return {'player': (g.sub_x, g.sub_y), 'enemy_fish': _cells(f[:2] for f in g.e_fish),
                'enemy_sub': _cells(s[:2] for s in g.e_subs), 'diver': _cells(d[:2] for d in g.divers),
                'friendly_bullet': _cells(b[:2] for b in g.f_bullets),
                'enemy_bullet': _cells(b[:2] for b in g.e_bullets)}
    maps = {'alien': g.alien_map, 'friendly_bullet': g.f_bullet_map, 'enemy_bullet': g.e_bullet_map}
    return {'player': (g.pos, 9), **{k: _cells(zip(*np.nonzero(m)[::-1])) for k, m in maps.items()}}


@pytest.mark.parametrize('game', MINATAR_GAMES)
def test_the_readout_matches_the_game_state(game):
    make_env(f'MinAtar/{game}-v0').close()  # registers the MinAtar ids, once, as the probe's own envs do
    env = gymnasium.make(f'MinAtar/{game}-v0')
    internals = env.unwrapped.game.env
    channels = probe_latents.channel_index(game)
    rng = np.random.default_rng(0)
    state, _ = env.reset(seed=0)
    seen = set()
    for _ in range(400):
        readout = probe_latents.object_positions(state, channels)
        expected = _from_game(game, internals)
        assert list(expected) == list(channels) == list(probe_latents.OBJECTS[game])
        np.testing.assert_allclose(readout, [expected[name] for name in channels], err_msg=game)
        seen |= {name for name, xy in zip(channels, readout) if not np.isnan(xy[0])}
        state, _, terminated, truncated, _ = env.step(int(rng.integers(6)))
        if terminated or truncated:
            state, _ = env.reset()
    assert 'player' in seen and len(seen) >= 2, seen  # the check saw more than the player


def test_encoding_in_chunks_equals_one_pass():
    """The RSSM state carries across chunks (and the resets inside them start each episode afresh)."""
    conf = build_config(['defaults', 'minatar', 'debug'])
    torch.manual_seed(0)
    model = probe_latents.Model(Dreamer(conf).eval(), conf, 'tiny', None, 'tiny')
    recording = probe_latents.play('Breakout', probe_latents.policy_maker('random', None)('Breakout', 0), 120, 0,
                                   progress=False)
    assert recording.reset.sum() > 2
    whole, chunked = probe_latents.encode(model, recording), probe_latents.encode(model, recording, chunk=7)
    assert whole['hz'].shape == (120, conf.deter_dim + conf.stoch_dim * conf.stoch_discrete)
    np.testing.assert_allclose(whole['hz'], chunked['hz'], atol=1e-5)


# --- the command

@pytest.fixture
def tiny_checkpoint(mlflow_local, tmp_path):
    """An untrained `debug` Dreamer saved as checkpoints/latest.pt of a run in the test's store."""
    conf = build_config(['defaults', 'minatar', 'debug'])
    torch.manual_seed(0)
    model = Dreamer(conf)
    path = tmp_path / 'latest.pt'
    save_checkpoint(path, 7, model, init_optimizers(model, conf), conf.to_dict())
    c = tracking.client()
    run_id = c.create_run(c.create_experiment('pydreamer'), run_name='tiny').info.run_id
    c.log_artifact(run_id, str(path), 'checkpoints')
    c.set_terminated(run_id, 'FINISHED')
    return {'run_id': run_id, 'uri': f'runs:/{run_id}/checkpoints/latest.pt', 'path': path}


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level  # run_cli configures logging for a process


def test_the_command_runs_end_to_end(tiny_checkpoint, tmp_path, restore_logging):
    out = tmp_path / 'out'
    code = run_cli(probe_latents.main, 'probe_latents',
                   ['--checkpoint', tiny_checkpoint['uri'], '--games', 'Breakout', 'asterix', '--steps', '300',
                    '--compare', str(tiny_checkpoint['path']), '--out', str(out), '--no-progress'])
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert names == {f'probe_tiny{s}' for s in ('.csv', '.md', '_maps.png', '_r2.png', '_pca.png')}
    with open(out / 'probe_tiny.csv') as f:
        rows = list(csv.DictReader(f))
    r2 = {(r['game'], r['object'], r['coordinate'], r['features']) for r in rows if r['measure'] == 'r2'}
    assert ('Breakout', 'ball', 'y', 'hz') in r2 and ('Asterix', 'gold', 'x', 'z') in r2
    assert {r['features'] for r in rows if r['measure'] == 'ari'} == {'h', 'z', 'hz'}
    cca = [float(r['value']) for r in rows if r['measure'] == 'cca_mean']
    assert len(cca) == 6 and np.allclose(cca, 1, atol=1e-6)     # the same weights on the same frames
    c = tracking.client()
    run = c.search_runs([c.get_experiment_by_name('pydreamer').experiment_id], "tags.stage = 'probe_latents'")[0]
    assert run.data.tags['source_run'] == tiny_checkpoint['run_id'] and run.info.status == 'FINISHED'
    assert {a.path for a in c.list_artifacts(run.info.run_id, 'probe')} == {f'probe/{n}' for n in names}


@pytest.mark.parametrize('args,words', [
    (['--checkpoint', '{tmp}/missing.pt'], ['missing.pt', 'does not exist']),
    (['--checkpoint', 'runs:/0123456789abcdef/checkpoints/latest.pt'], ["'0123456789abcdef' does not exist"]),
    (['--checkpoint', '{ckpt}', '--games', 'Breakout', 'Pong'], ["'Pong' is not a MinAtar game"]),
    (['--checkpoint', '{ckpt}', '--policy', 'dqn:{tmp}/agents'], ['dqn:', 'agents', 'does not exist']),
])
def test_a_bad_reference_is_one_sentence_and_exit_2(tiny_checkpoint, tmp_path, capsys, restore_logging, args, words):
    args = [a.format(tmp=tmp_path, ckpt=tiny_checkpoint['path']) for a in args]
    code = run_cli(probe_latents.main, 'probe_latents', [*args, '--out', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith('error: ')]
    assert code == 2 and len(errors) == 1 and 'Traceback' not in err, err
    assert all(w.format(tmp=tmp_path) in errors[0] for w in words), errors[0]
    assert not (tmp_path / 'out').exists()


def test_the_transfer_table_gives_mean_and_standard_error_over_seeds():
    from experiments import probe_transfer
    rows = [{'arm': arm, 'seed': seed, 'measure': 'r2', 'game': 'Breakout', 'object': name, 'coordinate': c,
             'features': f, 'value': value if name == 'ball' or c == 'x' else np.nan}
            for arm, seed, value in (('scratch', 0, 0.2), ('scratch', 1, 0.4), ('scratch', 2, 0.6),
                                     ('world_model', 0, 0.9))
            for name in ('player', 'ball') for c in 'xy' for f in ('h', 'z', 'hz')]
    text = probe_transfer.table(rows, 'heading')
    assert 'player y' not in text                                   # a coordinate that never varies
    scratch = next(line for line in text.splitlines() if line.startswith('| scratch | 3 |'))
    assert scratch.count('0.40 ± 0.12') == 3                        # sd 0.2 / sqrt(3)
    assert '| world_model | 1 | 0.90 | 0.90 | 0.90 |' in text
