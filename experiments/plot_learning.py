"""Learning curve of one run (e.g. a from-scratch launch.py run), read back from mlflow.

    python experiments/plot_learning.py --run <run id or run name> [--out docs] [--bins 12]

Writes `learning_<run name>.png` (episode return against env steps and against learner steps,
binned means with the per-episode points behind them) and `learning_<run name>.csv` (the
binned numbers), and prints the table. Episodes of the prefill policy (random by default) sit
at learner step 0; their mean return is drawn as the baseline line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments.curves import bin_index, binned, episodes, save_figure, write_csv  # noqa: E402
from pydreamer.tracking import client, get_run, setup_tracking  # noqa: E402


def find_run(ref: str):
    """A run by id, or the newest run with that name."""
    if len(ref) == 32 and all(ch in '0123456789abcdef' for ch in ref):
        return get_run(ref)
    c = client()
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()], f"attributes.run_name = '{ref}'",
                         order_by=['attributes.start_time DESC'], max_results=1)
    if not runs:
        raise SystemExit(f'No run with id or name {ref!r} is in the tracking store.')
    return runs[0]


def curve(data: np.ndarray, column: int, bins: int) -> list[dict]:
    """Binned mean return over `column` (0 learner steps, 1 env steps) of (N, 3) episode rows."""
    edges = np.linspace(0, max(data[:, column].max(), 1), bins + 1)
    means = binned(data[:, column], data[:, 2], edges)
    index = bin_index(data[:, column], edges)
    return [{'x_kind': 'learner_steps' if column == 0 else 'env_steps', 'x': float((lo + hi) / 2),
             'mean': float(m), 'episodes': int(np.sum(index == i))}
            for i, (lo, hi, m) in enumerate(zip(edges[:-1], edges[1:], means)) if not np.isnan(m)]


def plot(data: np.ndarray, rows: list[dict], title: str, baseline: float, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, column, kind in ((axes[0], 1, 'env_steps'), (axes[1], 0, 'learner_steps')):
        ax.scatter(data[:, column], data[:, 2], s=3, alpha=0.25, color='grey', label='episodes')
        pts = [r for r in rows if r['x_kind'] == kind]
        ax.plot([p['x'] for p in pts], [p['mean'] for p in pts], marker='o', label='binned mean')
        if not np.isnan(baseline):
            ax.axhline(baseline, color='red', linestyle='--', linewidth=1, label='prefill policy')
        ax.set_xlabel(kind.replace('_', ' '))
        ax.set_ylabel('episode return')
    save_figure(fig, axes, title, path)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--run', required=True, help='run id or run name')
    parser.add_argument('--out', default=str(ROOT / 'docs'))
    parser.add_argument('--bins', type=int, default=12)
    args = parser.parse_args(argv)
    setup_tracking()
    run = find_run(args.run)
    data = episodes(run.info.run_id)
    if not len(data):
        raise SystemExit(f'Run {run.info.run_id} has no agent/return metrics yet.')
    rows = curve(data, 1, args.bins) + curve(data, 0, args.bins)
    prefill = data[data[:, 0] == 0, 2]
    baseline = float(prefill.mean()) if len(prefill) else float('nan')
    name = run.info.run_name or run.info.run_id
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, ['x_kind', 'x', 'mean', 'episodes'], out / f'learning_{name}.csv')
    plot(data, rows, f'{name}: {run.data.params.get("env_id", "")}', baseline, out / f'learning_{name}.png')
    print(f'[plot] wrote {out / f"learning_{name}.png"} and .csv ({len(data)} episodes)')
    print(f'[plot] prefill policy: return {baseline:.2f} over {len(prefill)} episodes')
    for r in rows:
        print(f'[plot] {r["x_kind"]:14s} {r["x"]:>10.0f}  return {r["mean"]:6.2f}  ({r["episodes"]} episodes)')


if __name__ == '__main__':
    main(sys.argv[1:])
