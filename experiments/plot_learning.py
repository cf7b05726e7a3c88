"""Learning curves of one or more runs (e.g. from-scratch launch.py runs), read back from mlflow.

    python experiments/plot_learning.py --run <run id or run name> [--out docs] [--bins 12]
    python experiments/plot_learning.py --run <a> <b> --name breakout-cpu-vs-full
    python experiments/plot_learning.py --run <a> --csv docs/learning_<b>.csv --name a-vs-b

Writes `learning_<name>.png` (episode return against env steps, learner steps and wall-clock
minutes, binned means with the per-episode points of a single run behind them) and
`learning_<name>.csv` (the binned numbers), and prints the table; <name> is the run's name for
one run. Episodes of the prefill policy (random by default) sit at learner step 0; their mean
return is drawn as the baseline line. Wall-clock minutes leave out the pauses of a run resumed
in pieces (experiments/curves.py). `--csv` adds the curves of an earlier `learning_<name>.csv`,
e.g. of a run whose tracking store is gone, beside those of the runs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from experiments.curves import GAP_MINUTES, bin_index, binned, episodes, save_figure, write_csv
from pydreamer.tracking import client, get_run, setup_tracking

AXES = (('env_steps', 1, 'env steps'), ('learner_steps', 0, 'learner steps'), ('wall_minutes', 3, 'wall-clock minutes'))


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


def curve(data: np.ndarray, column: int, bins: int, run: str) -> list[dict]:
    """Binned mean return over `column` (see AXES) of (N, 4) episode rows."""
    edges = np.linspace(0, max(data[:, column].max(), 1), bins + 1)
    means = binned(data[:, column], data[:, 2], edges)
    index = bin_index(data[:, column], edges)
    kind = next(k for k, c, _ in AXES if c == column)
    return [{'run': run, 'x_kind': kind, 'x': float((lo + hi) / 2), 'mean': float(m), 'episodes': int(np.sum(index == i))}
            for i, (lo, hi, m) in enumerate(zip(edges[:-1], edges[1:], means)) if not np.isnan(m)]


def read_pauses(path: str) -> list[tuple[float, float]]:
    """(stop, cont) epoch seconds from a file of 'stop <s>' / 'cont <s>' lines."""
    words = [line.split()[:2] for line in Path(path).read_text().splitlines() if line.strip()]
    stops = [float(t) for kind, t in words if kind == 'stop']
    conts = [float(t) for kind, t in words if kind == 'cont']
    return list(zip(stops, conts))


def read_curves(path: Path) -> list[dict]:
    """The binned rows of a `learning_<name>.csv` written by this script."""
    import csv
    with open(path) as f:
        return [{'run': r['run'], 'x_kind': r['x_kind'], 'x': float(r['x']), 'mean': float(r['mean']),
                 'episodes': int(r['episodes'])} for r in csv.DictReader(f)]


def plot(data: dict[str, np.ndarray], rows: list[dict], title: str, baseline: float, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(AXES), figsize=(4.3 * len(AXES), 3.5))
    labels = list(dict.fromkeys(r['run'] for r in rows))
    for ax, (kind, column, label) in zip(axes, AXES):
        for run in labels:
            if len(labels) == 1:
                ax.scatter(data[run][:, column], data[run][:, 2], s=3, alpha=0.25, color='grey', label='episodes')
            pts = [r for r in rows if r['x_kind'] == kind and r['run'] == run]
            ax.plot([p['x'] for p in pts], [p['mean'] for p in pts], marker='o', markersize=3,
                    label='binned mean' if len(labels) == 1 else run)
        if not np.isnan(baseline):
            ax.axhline(baseline, color='red', linestyle='--', linewidth=1, label='prefill (random) policy')
        ax.set_title(f'return against {label}', fontsize=9)
        ax.set_xlabel(label)
        ax.set_ylabel('episode return')
    save_figure(fig, axes, title, path)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--run', required=True, nargs='+', help='run ids or run names')
    parser.add_argument('--name', default=None, help='output name (default: the run name of a single run)')
    parser.add_argument('--out', default=str(ROOT / 'docs'))
    parser.add_argument('--bins', type=int, default=12)
    parser.add_argument('--gap-minutes', type=float, default=GAP_MINUTES,
                        help='a stretch this long without an episode is a pause, left out of the wall-clock minutes')
    parser.add_argument('--pauses', default=None,
                        help="a file of 'stop <epoch s>' and 'cont <epoch s>' lines: the times the runs' processes were "
                             'stopped (SIGSTOP) and continued, left out of the wall-clock minutes instead of --gap-minutes')
    parser.add_argument('--csv', nargs='*', default=[], help='earlier learning_<name>.csv files to draw beside the runs')
    args = parser.parse_args(argv)
    setup_tracking()
    runs = [find_run(ref) for ref in args.run]
    data, rows = {}, []
    for run in runs:
        label = run.info.run_name or run.info.run_id
        data[label] = episodes(run.info.run_id, args.gap_minutes, read_pauses(args.pauses) if args.pauses else None)
        if not len(data[label]):
            raise SystemExit(f'Run {run.info.run_id} has no agent/return metrics yet.')
        rows += [r for _, column, _ in AXES for r in curve(data[label], column, args.bins, label)]
    for path in args.csv:
        rows += read_curves(Path(path))
    prefill = np.concatenate([d[d[:, 0] == 0, 2] for d in data.values()])
    baseline = float(prefill.mean()) if len(prefill) else float('nan')
    name = args.name or next(iter(data))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, ['run', 'x_kind', 'x', 'mean', 'episodes'], out / f'learning_{name}.csv')
    games = sorted({run.data.params.get('env_id', '') for run in runs})
    plot(data, rows, f'{name}: {", ".join(games)}', baseline, out / f'learning_{name}.png')
    print(f'[plot] wrote {out / f"learning_{name}.png"} and .csv ({sum(map(len, data.values()))} episodes)')
    print(f'[plot] prefill policy: return {baseline:.2f} over {len(prefill)} episodes')
    for r in rows:
        print(f'[plot] {r["run"]:24s} {r["x_kind"]:14s} {r["x"]:>10.0f}  return {r["mean"]:6.2f}  ({r["episodes"]} episodes)')


if __name__ == '__main__':
    main(sys.argv[1:])
