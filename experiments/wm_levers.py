"""World-model-only runs of several config variants on one dataset: does the model leave the plateau?

    python experiments/wm_levers.py --data-run <id> --name breakout-random --steps 400 --seeds 3 \
        --variant preset= --variant lr1e-3='--adam_lr 1e-3' --variant d32='--cnn_depth 32'

Each variant × seed is one `launch_wm_training.py --configs defaults minatar wm_training` run on the
data run's episodes with the variant's overrides, tagged `study=<name>`, `variant`, `seed`; a
finished one is reused and an unfinished one resumed when the same command runs again. Then the
runs' metrics are read back and written as `docs/wm_levers_<name>.csv` and `.png`, and a table is
printed at the `--report` steps: the training image loss against its static-marginal floor
(`train/loss_image_floor`; "under floor" = 1 - loss / floor), the KL, the eval image loss, the
share of object pixels (category > 0) and of changed pixels (category differs from the previous
frame) predicted right from the posterior (rec) and in open-loop dreams over the last
imag_horizon steps of each window (dream), and seconds per step;
mean ± standard error over seeds.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from experiments.curves import history, mean_se, save_figure, write_csv
from pydreamer.tracking import client, setup_tracking

METRICS = ('train/loss_image', 'train/loss_image_floor', 'train/loss_kl', 'train/fps', 'eval/loss_image',
           'eval/image_acc_rec', 'eval/image_acc_dream', 'eval/image_acc_changed_rec', 'eval/image_acc_changed_dream')


def find_run(study: str, variant: str, seed: int):
    query = f"tags.study = '{study}' and tags.variant = '{variant}' and tags.seed = '{seed}'"
    runs = client().search_runs([e.experiment_id for e in client().search_experiments()], query,
                                order_by=['attributes.start_time DESC'], max_results=1)
    return runs[0] if runs else None


def train(args, variant: str, overrides: list[str], seed: int) -> str:
    run = find_run(args.name, variant, seed)
    if run is not None and run.info.status == 'FINISHED':
        print(f'[wm_levers] {variant} seed {seed}: reusing finished run {run.info.run_id}', flush=True)
        return run.info.run_id
    command = [sys.executable, str(ROOT / 'launch_wm_training.py'), '--configs', *args.configs, 'wm_training',
               '--mlflow_run_id', args.data_run, '--n_steps', str(args.steps), '--seed', str(seed),
               '--log_interval', str(args.log_interval), '--eval_interval', str(args.eval_interval),
               '--save_interval', '100', '--logbatch_interval', str(args.steps),
               '--run_name', f'wm-{variant}-s{seed}-{args.name}',
               '--run_tags', f'{{study: "{args.name}", variant: "{variant}", seed: {seed}}}', *overrides]
    if run is not None:
        command += ['--resume_id', run.info.run_id]
    print(f'[wm_levers] $ {shlex.join(command[1:])}', flush=True)
    subprocess.run(command, cwd=ROOT, check=True)
    return find_run(args.name, variant, seed).info.run_id


def value_at(values: dict[int, list[float]], step: int) -> float:
    """The metric at the logged step nearest to `step` (nan when nothing was logged)."""
    if not values:
        return float('nan')
    nearest = min(values, key=lambda s: abs(s - step))
    return float(np.mean(values[nearest]))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data-run', required=True, help='mlflow run id of the episodes to train on')
    parser.add_argument('--name', required=True, help='study name: mlflow tag and output file name')
    parser.add_argument('--variant', action='append', required=True, metavar='NAME=OVERRIDES',
                        help="a variant and its config overrides, e.g. lr1e-3='--adam_lr 1e-3'; repeatable")
    parser.add_argument('--configs', nargs='+', default=['defaults', 'minatar'])
    parser.add_argument('--steps', type=int, default=400)
    parser.add_argument('--seeds', type=int, default=1)
    parser.add_argument('--log-interval', type=int, default=20)
    parser.add_argument('--eval-interval', type=int, default=100)
    parser.add_argument('--report', type=int, nargs='+', default=[200, 400])
    parser.add_argument('--out', default=str(ROOT / 'docs'))
    args = parser.parse_args(argv)
    variants = {}
    for spec in args.variant:
        name, _, overrides = spec.partition('=')
        variants[name] = shlex.split(overrides)
    setup_tracking()

    series = defaultdict(dict)   # (variant, seed) -> metric -> {step: [values]}
    for seed in range(args.seeds):
        for variant, overrides in variants.items():
            run_id = train(args, variant, overrides, seed)
            for key in METRICS:
                series[variant, seed][key] = history(run_id, key)

    rows = []
    for (variant, seed), metrics in series.items():
        for key, values in metrics.items():
            rows += [{'variant': variant, 'seed': seed, 'metric': key, 'step': step, 'value': float(np.mean(v))}
                     for step, v in sorted(values.items())]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, ['variant', 'seed', 'metric', 'step', 'value'], out / f'wm_levers_{args.name}.csv')
    _figure(series, variants, args, out / f'wm_levers_{args.name}.png')
    _table(series, variants, args)


def _under_floor(metrics: dict) -> dict[int, list[float]]:
    loss, floor = metrics['train/loss_image'], metrics['train/loss_image_floor']
    return {s: [1 - np.mean(loss[s]) / np.mean(floor[s])] for s in loss if s in floor}


def _table(series, variants, args) -> None:
    columns = [('under floor', _under_floor, '{:.1%}'), ('KL', 'train/loss_kl', '{:.4f}'),
               ('eval image', 'eval/loss_image', '{:.3f}'), ('acc rec', 'eval/image_acc_rec', '{:.1%}'),
               ('acc dream', 'eval/image_acc_dream', '{:.1%}'), ('changed rec', 'eval/image_acc_changed_rec', '{:.1%}'),
               ('changed dream', 'eval/image_acc_changed_dream', '{:.1%}')]
    print(f'\n{"variant":16} {"step":>5} ' + ' '.join(f'{c[0]:>17}' for c in columns) + f' {"s/step":>7}')
    for variant in variants:
        for step in args.report:
            cells = []
            for _, source, fmt in columns:
                values = [value_at(source(series[variant, s]) if callable(source) else series[variant, s][source],
                                   step) for s in range(args.seeds)]
                mean, se = mean_se(values)
                cells.append(f'{fmt.format(mean)} ± {fmt.format(se)}' if args.seeds > 1 else fmt.format(mean))
            fps = [np.mean([np.mean(v) for v in series[variant, s]['train/fps'].values()] or [np.nan])
                   for s in range(args.seeds)]
            print(f'{variant:16} {step:>5} ' + ' '.join(f'{c:>17}' for c in cells) + f' {1 / np.mean(fps):>7.3f}')
    print(f'({args.seeds} seed{"s" if args.seeds > 1 else ""}; mean ± standard error over seeds)')


def _figure(series, variants, args, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    panels = [('train image loss under its floor', _under_floor, '1 - loss / floor', False),
              ('KL (train)', 'train/loss_kl', 'nats', True),
              ('changed pixels right, posterior (eval)', 'eval/image_acc_changed_rec', 'share', False),
              ('changed pixels right, open-loop dream (eval)', 'eval/image_acc_changed_dream', 'share', False)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    palette = plt.rcParams['axes.prop_cycle'].by_key()['color']
    colours = {v: palette[i % len(palette)] for i, v in enumerate(variants)}  # the same in every panel
    for ax, (title, source, ylabel, log) in zip(axes, panels):
        for variant in variants:
            curves = [source(series[variant, s]) if callable(source) else series[variant, s][source]
                      for s in range(args.seeds)]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if not steps:
                continue
            values = np.array([[np.mean(c[step]) for step in steps] for c in curves])
            mean, se = mean_se(values, axis=0)
            ax.plot(steps, mean, marker='.', color=colours[variant], label=variant)
            if args.seeds > 1:
                ax.fill_between(steps, mean - se, mean + se, color=colours[variant], alpha=0.2)
        if title.startswith('train image'):
            ax.axhline(0, color='k', lw=0.8, ls='--', label='static-marginal floor')
            ax.axhline(0.15, color='grey', lw=0.8, ls=':', label='15% under the floor')
            ax.set_ylim(-0.6, 0.6)  # the early steps far above the floor would hide the region that matters
        if log:
            ax.set_yscale('log')
        ax.set_title(title, fontsize=9)
        ax.set_xlabel('world-model steps')
        ax.set_ylabel(ylabel)
    seeds = f'{args.seeds} seeds, mean ± s.e.' if args.seeds > 1 else '1 seed'
    save_figure(fig, axes, f'World-model levers on {args.name} ({seeds})', path, legend_rows=2)


if __name__ == '__main__':
    main(sys.argv[1:])
