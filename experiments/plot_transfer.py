"""Figure, CSV and table of a transfer experiment, read back from mlflow.

    python experiments/plot_transfer.py [--transfer <name>] [--out docs] [--bin-steps N] [--at 500 1000 1500]

Reads the runs tagged `transfer=<name>` (default: the newest experiment found) and writes
`transfer_<name>.png` (return against learner steps and against env steps, world-model losses on
the unseen game's eval split against learner steps; mean ± standard error over seeds, the
random prefill policy's return as a line), `transfer_<name>.csv` (the plotted numbers) and
`transfer_<name>.md` (the table it also prints: per arm, the eval losses at step 0, i.e. before
any update (zero-shot for a pretrained model), at 100, 1000 and at the end, and the return at
the `--at` learner steps).

Each episode's return is placed at the learner step of the checkpoint that played it
(`agent/policy_learner_step`; 0 for episodes of the prefill policy, which make the random baseline)
and at the env steps of the run so far. The return "at step s" is the mean over the episodes
played by checkpoints of steps in (s - bin, s], first per seed, then over seeds.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from experiments.curves import episodes, history, mean_se, save_figure, write_csv
from pydreamer.tracking import client, setup_tracking

ARMS = ('finetune', 'finetune_frozen_rssm', 'scratch')
LOSSES = {'eval/loss_image': 'image loss', 'eval/loss_kl': 'KL', 'eval/loss_reward': 'reward loss'}
LOSS_STEPS = (0, 100, 1000)


def transfer_runs(transfer: str | None):
    c = client()
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()], "tags.transfer != ''",
                         order_by=['attributes.start_time DESC'])
    if not runs:
        raise SystemExit('No runs tagged with a transfer experiment name were found in the tracking store.')
    transfer = transfer or runs[0].data.tags['transfer']
    chosen = [r for r in runs if r.data.tags['transfer'] == transfer and r.data.tags.get('arm') in ARMS]
    if not chosen:
        raise SystemExit(f'No fine-tuning or scratch runs are tagged transfer={transfer}.')
    return transfer, chosen


def _per_arm(runs) -> dict[str, list]:
    per_arm = defaultdict(list)
    for run in runs:
        per_arm[run.data.tags['arm']].append(run)
    return {arm: per_arm[arm] for arm in ARMS if arm in per_arm}


def _binned_per_seed(data: np.ndarray, column: int, edges: np.ndarray) -> np.ndarray:
    """Mean return per bin (lo, hi] of `column` for one seed's (N, 3) episode rows (nan when empty)."""
    out = np.full(len(edges) - 1, np.nan)
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        inside = (data[:, column] > lo) & (data[:, column] <= hi)
        if inside.any():
            out[i] = data[inside, 2].mean()
    return out


def summarise(runs, bin_steps: int) -> tuple[list[dict], float]:
    """Rows of (arm, metric, x_kind, x, mean, se, seeds) for every curve, and the random return."""
    data = {r.info.run_id: episodes(r.info.run_id) for r in runs}
    prefill = np.concatenate([d[d[:, 0] == 0, 2] for d in data.values()] or [np.zeros(0)])
    random_return = float(prefill.mean()) if len(prefill) else float('nan')
    played = {k: d[d[:, 0] > 0] for k, d in data.items()}
    rows = []
    top_learner = max([d[:, 0].max() for d in played.values() if len(d)] or [bin_steps])
    top_env = max([d[:, 1].max() for d in played.values() if len(d)] or [1])
    env_bin = max(1.0, top_env / max(1, round(top_learner / bin_steps)))
    for kind, column, width, top in (('learner_steps', 0, bin_steps, top_learner), ('env_steps', 1, env_bin, top_env)):
        edges = np.arange(0, top + width, width)
        for arm, arm_runs in _per_arm(runs).items():
            curves = np.array([_binned_per_seed(played[r.info.run_id], column, edges) for r in arm_runs])
            for i, hi in enumerate(edges[1:]):
                col = curves[:, i]
                if np.any(~np.isnan(col)):
                    mean, se = mean_se(col)
                    rows.append({'arm': arm, 'metric': 'agent/return', 'x_kind': kind, 'x': float(hi),
                                 'mean': mean, 'se': se, 'seeds': int(np.sum(~np.isnan(col)))})
    for key in LOSSES:
        for arm, arm_runs in _per_arm(runs).items():
            series = [history(r.info.run_id, key) for r in arm_runs]
            for step in sorted(set().union(*series)):
                values = [np.mean(s[step]) for s in series if step in s]
                mean, se = mean_se(values)
                rows.append({'arm': arm, 'metric': key, 'x_kind': 'learner_steps', 'x': float(step),
                             'mean': mean, 'se': se, 'seeds': len(values)})
    for arm, arm_runs in _per_arm(runs).items():  # the final actor's evaluation (transfer.py)
        finals = [history(r.info.run_id, 'final/return') for r in arm_runs]
        points = [(step, np.mean(v)) for f in finals for step, v in f.items()]
        if points:
            mean, se = mean_se([v for _, v in points])
            rows.append({'arm': arm, 'metric': 'final/return', 'x_kind': 'learner_steps',
                         'x': float(max(step for step, _ in points)), 'mean': mean, 'se': se, 'seeds': len(points)})
    return rows, random_return


def _cell(rows: list[dict], arm: str, metric: str, x: float | None) -> str:
    pts = [r for r in rows if r['arm'] == arm and r['metric'] == metric and r['x_kind'] == 'learner_steps']
    if not pts:
        return '–'
    r = pts[-1] if x is None else min(pts, key=lambda p: abs(p['x'] - x))
    if x is not None and abs(r['x'] - x) > max(1.0, 0.1 * x):
        return '–'
    spread = f' ± {r["se"]:.2f}' if r['seeds'] > 1 else ' (1 seed)'
    return f'{r["mean"]:.2f}{spread}'


def table(rows: list[dict], random_return: float, at: list[int], end: float) -> str:
    """A markdown table: per arm, seeds, eval losses at LOSS_STEPS and the end, returns at `at`."""
    loss_cols = [(key, step) for key in LOSSES for step in (*LOSS_STEPS, None)]
    head = ['arm', 'seeds'] + [f'{LOSSES[k]} @{"end" if s is None else s}' for k, s in loss_cols] + \
           [f'return @{s}' for s in at] + ['final actor return']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for arm in ARMS:
        seeds = max([r['seeds'] for r in rows if r['arm'] == arm] or [0])
        if not seeds:
            continue
        cells = [arm, str(seeds)] + [_cell(rows, arm, k, s if s is not None else end) for k, s in loss_cols] + \
                [_cell(rows, arm, 'agent/return', s) for s in at] + [_cell(rows, arm, 'final/return', None)]
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines.append('| random policy | | ' + ' | '.join([''] * len(loss_cols)) + ' | ' +
                 ' | '.join([f'{random_return:.2f}'] * (len(at) + 1)) + ' |')
    return '\n'.join(lines)


def plot(rows: list[dict], random_return: float, title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    panels = [('agent/return', 'learner_steps', 'return against learner steps', 'episode return'),
              ('agent/return', 'env_steps', 'return against env steps', 'episode return')] + \
             [(k, 'learner_steps', f'{name} on the unseen game (eval)', 'nats' if k != 'eval/loss_reward' else
               '0.5 · squared error') for k, name in LOSSES.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.5))
    colours = dict(zip(ARMS, plt.rcParams['axes.prop_cycle'].by_key()['color']))
    for ax, (metric, kind, subtitle, ylabel) in zip(axes, panels):
        for arm in ARMS:
            pts = [r for r in rows if r['arm'] == arm and r['metric'] == metric and r['x_kind'] == kind]
            if not pts:
                continue
            x, m, s = (np.array([p[k] for p in pts]) for k in ('x', 'mean', 'se'))
            seeds = max(p['seeds'] for p in pts)
            label = f'{arm} ({seeds} seed{"s" if seeds > 1 else ""})'
            ax.plot(x, m, marker='.', color=colours[arm], label=label)
            if seeds > 1:
                ax.fill_between(x, m - s, m + s, color=colours[arm], alpha=0.2)
        if metric == 'agent/return' and np.isfinite(random_return):
            ax.axhline(random_return, color='k', linestyle='--', linewidth=1, label='random policy')
        if metric == 'eval/loss_kl':
            ax.set_yscale('log')
        ax.set_title(subtitle, fontsize=9)
        ax.set_xlabel(kind.replace('_', ' '))
        ax.set_ylabel(ylabel)
    save_figure(fig, axes, title, path, legend_rows=1)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--transfer', default=None, help='experiment name (tag transfer=...); default: newest')
    parser.add_argument('--out', default=str(ROOT / 'docs'))
    parser.add_argument('--bin-steps', type=int, default=0,
                        help='width of the learner-step bins of the return (default: a tenth of the longest arm)')
    parser.add_argument('--at', type=int, nargs='+', default=None,
                        help='learner steps of the return columns (default: a third, two thirds and the end)')
    args = parser.parse_args(argv)
    setup_tracking()
    transfer, runs = transfer_runs(args.transfer)
    end = float(max(max(history(r.info.run_id, 'train/loss_model'), default=0) for r in runs) or 1)
    bin_steps = args.bin_steps or max(1, int(round(end / 10)))
    rows, random_return = summarise(runs, bin_steps)
    at = args.at or [int(end // 3), int(2 * end // 3), int(end)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, ['arm', 'metric', 'x_kind', 'x', 'mean', 'se', 'seeds'], out / f'transfer_{transfer}.csv')
    game = runs[0].data.params.get('env_id', '')
    plot(rows, random_return, f'Transfer to {game} ({transfer}): mean ± standard error over seeds',
         out / f'transfer_{transfer}.png')
    text = table(rows, random_return, at, end)
    (out / f'transfer_{transfer}.md').write_text(f'Transfer to {game} ({transfer}); mean ± standard error over '
                                                  f'seeds; returns over bins of {bin_steps} learner steps.\n\n{text}\n')
    print(f'[plot] wrote {out / f"transfer_{transfer}"}.png, .csv and .md\n{text}')


if __name__ == '__main__':
    main(sys.argv[1:])
