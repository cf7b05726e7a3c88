"""What a latent encodes, measured: pure numpy functions over features X (N, F), one row per frame.

`folds` (N,) assign whole episodes to cross-validation folds (`episode_folds`): consecutive frames
of an episode are near copies, so a probe scored on frames of its training episodes would measure
memory, not encoding. Every function is deterministic given its seed.
"""
from __future__ import annotations

import numpy as np

RIDGE_ALPHAS = np.logspace(-6, 2, 17)  # times the mean feature variance
_TINY = 1e-10


def pearson(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of every column of X (N, F) with y (N,): (F,), nan where a column or y is constant."""
    Xc = X - X.mean(0)
    yc = y - y.mean()
    denominator = np.sqrt((Xc ** 2).sum(0) * (yc ** 2).sum())
    r = np.full(X.shape[1], np.nan)
    ok = denominator > _TINY
    r[ok] = (Xc.T @ yc)[ok] / denominator[ok]
    return r


def episode_folds(episodes: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold index (N,) in 0..min(k, episodes)-1: whole episodes, largest first onto the fold with the
    fewest frames so far, so that one long episode does not leave a fold nearly empty."""
    ids, sizes = np.unique(episodes, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(ids))
    order = order[np.argsort(-sizes[order], kind='stable')]
    frames = np.zeros(min(k, len(ids)), int)
    fold_of = np.empty(len(ids), int)
    for i in order:
        fold_of[i] = frames.argmin()
        frames[fold_of[i]] += sizes[i]
    return fold_of[np.searchsorted(ids, episodes)]


def _sums(X: np.ndarray, Y: np.ndarray) -> tuple:
    return len(X), X.sum(0), Y.sum(0), X.T @ X, X.T @ Y


def _ridge_path(sums: tuple, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge weights (A, F, T) and intercepts (A, T) for every alpha, from the sums over the training
    rows. Features are centred, not standardised: a feature that is nearly constant in the training
    rows (a rare latent class) would be scaled up to unit variance there and blow up on held-out
    frames. Alphas are relative to the mean feature variance, so the grid does not depend on units."""
    n, sx, sy, sxx, sxy = sums
    mu, my = sx / n, sy / n
    e, V = np.linalg.eigh(sxx / n - np.outer(mu, mu))
    e = np.clip(e, 0, None)
    p = V.T @ (sxy / n - np.outer(mu, my))                                  # (F, T)
    shrunk = p[None] / (e[None, :, None] + alphas[:, None, None] * max(e.mean(), _TINY))  # (A, F, T)
    W = V[None] @ shrunk
    return W, my[None] - np.einsum('f,aft->at', mu, W)


def ridge_cv_r2(X: np.ndarray, Y: np.ndarray, folds: np.ndarray, alphas: np.ndarray = RIDGE_ALPHAS) -> np.ndarray:
    """Cross-validated R² (T,) of a linear probe Y (N, T) ~ X (N, F).

    Each fold in turn is held out; the next fold chooses alpha per target (the one of least squared
    error there, fitted on the remaining folds); the probe refitted on all but the held-out fold with
    that alpha predicts it. R² = 1 - SSE / SST over all held-out predictions, SST around the mean of
    all of Y. The held-out fold never takes part in a choice. nan for a constant target or fewer than
    three folds."""
    Y = Y.reshape(len(Y), -1)
    ids = np.unique(folds)
    sst = ((Y - Y.mean(0)) ** 2).sum(0)
    if len(ids) < 3:
        return np.full(Y.shape[1], np.nan)
    X = X.astype(np.float64)
    rows = [folds == f for f in ids]
    sums = [_sums(X[r], Y[r]) for r in rows]
    total = [sum(parts) for parts in zip(*sums)]
    targets = np.arange(Y.shape[1])
    sse = np.zeros(Y.shape[1])
    for i, held_out in enumerate(rows):
        j = (i + 1) % len(ids)
        W, b = _ridge_path([t - h - v for t, h, v in zip(total, sums[i], sums[j])], alphas)
        error = ((Y[rows[j]][None] - X[rows[j]] @ W - b[:, None]) ** 2).sum(1)  # (A, T)
        W, b = _ridge_path([t - h for t, h in zip(total, sums[i])], alphas[error.argmin(0)])
        prediction = X[held_out] @ W[targets, :, targets].T + b[targets, targets]  # alpha t for target t
        sse += ((Y[held_out] - prediction) ** 2).sum(0)
    return np.where(sst > _TINY, 1 - sse / np.where(sst > _TINY, sst, 1), np.nan)


def position_map(values: np.ndarray, x: np.ndarray, y: np.ndarray, size: int = 10) -> np.ndarray:
    """Mean of `values` (N,) per grid cell (row y, column x, rounded): (size, size), nan where unvisited."""
    cell = np.clip(np.rint(y), 0, size - 1).astype(int) * size + np.clip(np.rint(x), 0, size - 1).astype(int)
    total = np.bincount(cell, values, size * size)
    count = np.bincount(cell, minlength=size * size)
    with np.errstate(invalid='ignore'):
        return (total / np.where(count, count, np.nan)).reshape(size, size)


def kmeans(X: np.ndarray, k: int, seed: int = 0, restarts: int = 4, iterations: int = 100) -> np.ndarray:
    """Cluster labels (N,) of Lloyd's k-means with k-means++ seeding; the restart of lowest inertia."""
    rng = np.random.default_rng(seed)
    X = X.astype(np.float64)
    squared = (X ** 2).sum(1)
    best, best_inertia = None, np.inf
    for _ in range(restarts):
        centres = _kmeans_plus_plus(X, squared, k, rng)
        labels = None
        for _ in range(iterations):
            distance = squared[:, None] - 2 * X @ centres.T + (centres ** 2).sum(1)[None]  # (N, k)
            new = distance.argmin(1)
            if labels is not None and np.array_equal(new, labels):
                break
            labels = new
            centres = np.stack([X[labels == j].mean(0) if np.any(labels == j) else centres[j] for j in range(k)])
        inertia = distance[np.arange(len(X)), labels].sum()
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def _kmeans_plus_plus(X: np.ndarray, squared: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centres = [X[rng.integers(len(X))]]
    for _ in range(1, k):
        d2 = np.clip(squared[:, None] - 2 * X @ np.stack(centres).T + (np.stack(centres) ** 2).sum(1), 0, None).min(1)
        total = d2.sum()
        centres.append(X[rng.choice(len(X), p=d2 / total)] if total > 0 else X[rng.integers(len(X))])
    return np.stack(centres)


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Hubert & Arabie's adjusted Rand index of two labelings (N,): 1 for the same partition, ~0 for
    independent ones. 1 when both put everything in one cluster (the index is 0/0 there)."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)
    index, rows, columns = _pairs(table), _pairs(table.sum(1)), _pairs(table.sum(0))
    expected = rows * columns / _pairs(np.array([len(a)]))
    maximum = (rows + columns) / 2
    return 1.0 if maximum == expected else float((index - expected) / (maximum - expected))


def _pairs(counts: np.ndarray) -> float:
    return float((counts * (counts - 1) / 2).sum())


def pca(X: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores (N, dims) on the leading principal components and the share of variance each explains.
    Signs are fixed so that each component's largest loading is positive."""
    Xc = X.astype(np.float64) - X.mean(0)
    e, V = np.linalg.eigh(Xc.T @ Xc / len(X))
    e = np.clip(e, 0, None)
    order = np.argsort(e)[::-1][:dims]
    V = V[:, order] * np.sign(V[np.abs(V[:, order]).argmax(0), order])
    return Xc @ V, e[order] / max(e.sum(), _TINY)


def cca(X: np.ndarray, Y: np.ndarray, dims: int = 20) -> np.ndarray:
    """Canonical correlations, descending, between X (N, p) and Y (N, q) reduced to their `dims` leading
    principal components first (SVCCA, Raghu et al. 2017): on all p, q features N ≈ 10 p frames would
    let CCA find near-perfect correlations by chance. They are the singular values of Qxᵀ Qy for
    orthonormal bases Qx, Qy of the centred spaces."""
    bases = []
    for Z in (X, Y):
        scores, explained = pca(Z, dims)
        scores = scores[:, explained > 1e-9]  # a component without variance has no direction to match
        bases.append(np.linalg.qr(scores)[0])
    return np.clip(np.linalg.svd(bases[0].T @ bases[1], compute_uv=False), 0, 1)
