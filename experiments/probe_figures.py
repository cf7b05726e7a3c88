"""The figures of experiments/probe_latents.py: position maps, probe R² bars and the PCA projection."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.curves import save_figure

FEATURE_LABELS = {'h': 'h (deterministic)', 'z': 'z (stochastic)', 'hz': 'h and z'}


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def maps_figure(maps: dict[str, dict[str, tuple[str, np.ndarray]]], title: str, path: Path) -> None:
    """One 10×10 panel per game and object: the mean of its best feature per cell (blank: never there)."""
    plt = _pyplot()
    panels = [(game, name, feature, grid) for game, per_object in maps.items()
              for name, (feature, grid) in per_object.items()]
    columns = min(6, max(1, len(panels)))
    rows = -(-max(1, len(panels)) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.4 * rows), squeeze=False)
    axes = axes.ravel()
    for ax, (game, name, feature, grid) in zip(axes, panels):
        image = ax.imshow(grid, cmap='viridis', interpolation='nearest')
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
        ax.set_title(f'{game} {name}: {feature}', fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(panels):]:
        ax.axis('off')
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def r2_figure(rows: list[dict], title: str, path: Path) -> None:
    """Per game, the held-out R² of the ridge probe on h, z and both, per object and coordinate."""
    plt = _pyplot()
    r2 = [r for r in rows if r['measure'] == 'r2']
    games = list(dict.fromkeys(r['game'] for r in r2))
    widths = [max(2.5, 0.55 * len({(r['object'], r['coordinate']) for r in r2 if r['game'] == g})) for g in games]
    fig, axes = plt.subplots(1, len(games), figsize=(sum(widths), 3.6), squeeze=False,
                             gridspec_kw={'width_ratios': widths})
    axes = axes.ravel()
    width = 0.27
    for ax, game in zip(axes, games):
        targets = list(dict.fromkeys((r['object'], r['coordinate']) for r in r2 if r['game'] == game))
        for j, features in enumerate(FEATURE_LABELS):
            values = {(r['object'], r['coordinate']): r['value'] for r in r2
                      if r['game'] == game and r['features'] == features}
            ax.bar(np.arange(len(targets)) + (j - 1) * width, [values.get(t, np.nan) for t in targets], width,
                   label=FEATURE_LABELS[features])
        ax.set_xticks(np.arange(len(targets)), [f'{o} {c}' for o, c in targets], rotation=45, ha='right', fontsize=7)
        ax.axhline(0, color='k', lw=0.6)
        ax.set_ylim(-0.5, 1)  # below -0.5 (a probe worse than the mean) is cut off: the detail is in the CSV
        ax.set_title(game, fontsize=9)
        ax.set_ylabel('R² on held-out episodes')
    save_figure(fig, axes, title, path, legend_rows=1)


def pca_figure(cluster: dict, title: str, path: Path) -> None:
    """The frames' features on their first two principal components, coloured by game."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    for i, game in enumerate(cluster['games']):
        points = cluster['scores'][cluster['label'] == i]
        ax.scatter(points[:, 0], points[:, 1], s=3, alpha=0.4, label=game)
    pc1, pc2 = cluster['explained']
    ax.set_xlabel(f'PC 1 ({pc1:.0%} of the variance)')
    ax.set_ylabel(f'PC 2 ({pc2:.0%})')
    ax.legend(fontsize=7, markerscale=3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
