"""Figures and numbers of a transfer experiment, read back from mlflow.

    python experiments/plot_transfer.py [--transfer <id>] [--out docs] [--bins 10]

Reads the runs tagged `transfer=<id>` (default: the newest experiment id found), and writes
`transfer_<id>.png` (return against learner steps and against env steps, world-model loss terms
against learner steps; mean ± standard deviation over seeds) and `transfer_<id>.csv` (the
plotted numbers), then prints the return of each arm in the last learner-step bin.

Each episode's return is placed at the learner step of the checkpoint that played it
(`agent/policy_learner_step`; 0 for prefill episodes) and at the env steps of the run so far.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments.curves import binned, episodes, history, save_figure, write_csv  # noqa: E402
from pydreamer.tracking import client, setup_tracking  # noqa: E402

ARMS = ('finetune', 'finetune_frozen_rssm', 'scratch')
LOSSES = ('train/loss_image', 'train/loss_kl', 'train/loss_reward')


def transfer_runs(transfer: str | None):
    c = client()
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()], "tags.transfer != ''",
                         order_by=['attributes.start_time DESC'])
    if not runs:
        raise SystemExit('No runs tagged with a transfer experiment id were found in the tracking store.')
    transfer = transfer or runs[0].data.tags['transfer']
    chosen = [r for r in runs if r.data.tags['transfer'] == transfer and r.data.tags.get('arm') in ARMS]
    if not chosen:
        raise SystemExit(f'No fine-tuning or scratch runs are tagged transfer={transfer}.')
    return transfer, chosen


def summarise(runs, bins: int) -> list[dict]:
    """Rows of (arm, x_kind, x, mean, std, seeds) for every curve of the figure."""
    per_arm = defaultdict(list)
    for run in runs:
        per_arm[run.data.tags['arm']].append(run)
    data = {r.info.run_id: episodes(r.info.run_id) for r in runs}
    rows = []
    max_learner = max(max((d[:, 0].max() if len(d) else 0) for d in data.values()), 1)
    max_env = max(max((d[:, 1].max() if len(d) else 0) for d in data.values()), 1)
    for kind, column, top in (('learner_steps', 0, max_learner), ('env_steps', 1, max_env)):
        edges = np.linspace(0, top, bins + 1)
        centres = (edges[:-1] + edges[1:]) / 2
        for arm, arm_runs in per_arm.items():
            curves = np.array([binned(data[r.info.run_id][:, column], data[r.info.run_id][:, 2], edges)
                               for r in arm_runs if len(data[r.info.run_id])])
            if not len(curves):
                continue
            for x, col in zip(centres, curves.T):
                seen = col[~np.isnan(col)]
                if len(seen):
                    rows.append({'arm': arm, 'metric': 'agent/return', 'x_kind': kind, 'x': float(x),
                                 'mean': float(seen.mean()), 'std': float(seen.std()), 'seeds': len(seen)})
    for key in LOSSES:
        for arm, arm_runs in per_arm.items():
            series = [history(r.info.run_id, key) for r in arm_runs]
            steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
            for step in steps:
                values = np.array([np.mean(s[step]) for s in series])
                rows.append({'arm': arm, 'metric': key, 'x_kind': 'learner_steps', 'x': float(step),
                             'mean': float(values.mean()), 'std': float(values.std()), 'seeds': len(values)})
    return rows


def plot(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    panels = [('agent/return', 'learner_steps'), ('agent/return', 'env_steps')] + [(k, 'learner_steps') for k in LOSSES]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (metric, kind) in zip(axes, panels):
        for arm in ARMS:
            pts = [r for r in rows if r['arm'] == arm and r['metric'] == metric and r['x_kind'] == kind]
            if not pts:
                continue
            x = np.array([p['x'] for p in pts])
            m = np.array([p['mean'] for p in pts])
            s = np.array([p['std'] for p in pts])
            ax.plot(x, m, label=arm)
            ax.fill_between(x, m - s, m + s, alpha=0.2)
        ax.set_xlabel(kind.replace('_', ' '))
        ax.set_title(metric.split('/')[-1].replace('_', ' '))
    save_figure(fig, axes, title, path)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--transfer', default=None, help='experiment id (tag transfer=...); default: newest')
    parser.add_argument('--out', default=str(ROOT / 'docs'))
    parser.add_argument('--bins', type=int, default=10)
    args = parser.parse_args(argv)
    setup_tracking()
    transfer, runs = transfer_runs(args.transfer)
    rows = summarise(runs, args.bins)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, ['arm', 'metric', 'x_kind', 'x', 'mean', 'std', 'seeds'], out / f'transfer_{transfer}.csv')
    game = runs[0].data.params.get('env_id', '')
    plot(rows, f'transfer {transfer} on {game}: mean ± std over seeds', out / f'transfer_{transfer}.png')
    print(f'[plot] wrote {out / f"transfer_{transfer}.png"} and .csv')
    for arm in ARMS:
        last = [r for r in rows if r['arm'] == arm and r['metric'] == 'agent/return' and r['x_kind'] == 'learner_steps']
        if last:
            r = last[-1]
            print(f'[plot] {arm:22s} return {r["mean"]:.2f} ± {r["std"]:.2f} ({r["seeds"]} seeds) '
                  f'at ~{r["x"]:.0f} learner steps')


if __name__ == '__main__':
    main(sys.argv[1:])
