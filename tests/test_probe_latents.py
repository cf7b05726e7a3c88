"""The latent probe's measures on planted signals and hand-computed values."""
import numpy as np
import pytest

from pydreamer import probes


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
