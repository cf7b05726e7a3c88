"""What the plotting commands share: episode returns read back from mlflow, binning, and writing
a figure and its CSV."""
from __future__ import annotations

import csv
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from pydreamer.tracking import client


def history(run_id: str, key: str) -> dict[int, list[float]]:
    values = defaultdict(list)
    for m in client().get_metric_history(run_id, key):
        values[m.step].append(m.value)
    return values


GAP_MINUTES = 10  # a pause this long between logged episodes means the run was stopped and resumed


def episodes(run_id: str, gap_minutes: float = GAP_MINUTES,
             pauses: list[tuple[float, float]] | None = None) -> np.ndarray:
    """(N, 4) rows of (learner step, env steps, return, wall minutes), one per logged episode;
    episodes of the prefill policy (no `agent/policy_learner_step`) sit at learner step 0. Wall
    minutes count from the first episode and leave out the pauses: the given (start, end) epoch
    seconds (e.g. a run's processes stopped with SIGSTOP), or else every stretch of `gap_minutes`
    without an episode (a run resumed in pieces)."""
    metrics = sorted(client().get_metric_history(run_id, 'agent/return'), key=lambda m: (m.step, m.timestamp))
    learner_steps = history(run_id, 'agent/policy_learner_step')
    minutes = np.array([m.timestamp for m in metrics], dtype=float) / 60_000
    if pauses is not None and len(minutes):
        start = minutes.min()
        paused = [np.clip(minutes, a / 60, b / 60) - np.clip(start, a / 60, b / 60) for a, b in pauses]
        wall = minutes - start - np.sum(paused, axis=0) if paused else minutes - start
    elif len(minutes):
        gaps = np.diff(np.sort(minutes), prepend=minutes.min())
        active = np.cumsum(np.where(gaps > gap_minutes, 0, gaps))
        wall = active[np.argsort(np.argsort(minutes, kind='stable'), kind='stable')]
    else:
        wall = minutes
    rows = [(learner_steps.get(m.step, [0.0])[0], m.step, m.value, w) for m, w in zip(metrics, wall)]
    return np.array(rows, dtype=float).reshape(-1, 4)


def bin_index(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each x among len(edges) - 1 bins; values outside fall into the end bins."""
    return np.clip(np.digitize(x, edges[1:-1]), 0, len(edges) - 2)


def binned(x: np.ndarray, y: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean of y per bin of x (nan for an empty bin)."""
    index = bin_index(x, edges)
    return np.array([y[index == i].mean() if np.any(index == i) else np.nan for i in range(len(edges) - 1)])


def mean_se(values, axis=None) -> tuple:
    """Mean and standard error of the mean (ddof 1) over `axis`, ignoring nan; the error is 0 for
    a single value (callers say "1 seed" rather than draw it)."""
    values = np.asarray(values, dtype=float)
    n = np.sum(~np.isnan(values), axis=axis)
    with np.errstate(invalid='ignore', divide='ignore'), warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # a single value or an all-nan column
        mean = np.nanmean(values, axis=axis)
        se = np.where(n > 1, np.nanstd(values, axis=axis, ddof=1) / np.sqrt(np.maximum(n, 1)), 0.0)
    return (float(mean), float(se)) if np.ndim(mean) == 0 else (mean, se)


def write_csv(rows: list[dict], fields: list[str], path: Path) -> None:
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def save_figure(fig, axes, title: str, path: Path, legend_rows: int = 0) -> None:
    """The title above all panels and a small PNG. The legend of the first panel goes on that
    panel, or, with legend_rows > 0, below the figure (one legend for panels that share lines)."""
    import matplotlib.pyplot as plt
    fig.suptitle(title, fontsize=10)
    if legend_rows:
        handles, labels = axes[0].get_legend_handles_labels()
        ncol = -(-len(labels) // legend_rows)
        fig.legend(handles, labels, loc='lower center', ncol=ncol, fontsize=8)
        fig.tight_layout(rect=(0, 0.07 * legend_rows, 1, 1))
    else:
        axes[0].legend(fontsize=8)
        fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
