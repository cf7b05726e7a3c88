"""The latent probe across the arms of a transfer experiment, on the same frames of the unseen game.

    python experiments/probe_transfer.py --transfer cpu-breakout [--game Breakout] [--steps 10000] \
        [--policy random] [--untrained-seeds 3] [--out docs]

Finds the finished runs tagged `transfer=<name>` (experiments/transfer.py): the pretrained
`world_model`, and per seed `finetune`, `finetune_frozen_rssm` and `scratch`; adds `untrained`
references (fresh initialisations of the world model's architecture, one per seed), which say how
much of a probe's R² any random network gives. One data policy plays `--steps` frames of the game
once; every checkpoint encodes those same frames (experiments/probe_latents.py) and is probed.
Per arm, mean ± standard error over seeds of the held-out R² of the ridge probe for each object's
x and y on h, z and both, and the SVCCA of each model's features with the pretrained world model's
(how far fine-tuning moved the representation). Writes `probe_transfer_<name>.md/.csv/.png` and
logs them in an mlflow run tagged `stage: probe_latents`, `source_run: <the transfer's parent run>`.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

from experiments import probe_latents
from experiments.curves import mean_se, save_figure, write_csv
from pydreamer.launching.cli import run_cli
from pydreamer.tracking import RunNotFoundError, client

ARMS = ('untrained', 'world_model', 'finetune', 'finetune_frozen_rssm', 'scratch')
FIELDS = ['arm', 'seed', 'run', *probe_latents.CSV_FIELDS]


def arm_runs(transfer: str) -> tuple[str, list[tuple[str, int, str]]]:
    """The transfer's parent run and its finished (arm, seed, run id) with a checkpoint, in ARMS order."""
    c = client()
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()],
                         f"tags.transfer = '{transfer}' and attributes.status = 'FINISHED'")
    parent = [r.info.run_id for r in runs if r.data.tags.get('arm') == 'parent']
    found = [(r.data.tags['arm'], int(r.data.tags.get('seed', 0)), r.info.run_id) for r in runs
             if r.data.tags.get('arm') in ARMS]
    if not parent or not any(arm == 'world_model' for arm, _, _ in found):
        raise RunNotFoundError(f'The tracking store holds no finished transfer experiment {transfer!r} with a '
                               f'world model; experiments/transfer.py --name {transfer} makes one.')
    return parent[0], sorted(found, key=lambda f: (ARMS.index(f[0]), f[1]))


def probe_arms(args, runs: list[tuple[str, int, str]]) -> list[dict]:
    """Probe rows of every arm's checkpoint (and the untrained references) on one recording."""
    models = [(arm, seed, run, probe_latents.load_model(f'runs:/{run}/checkpoints/latest.pt'))
              for arm, seed, run in runs]
    _, _, world_model, reference = next(m for m in models if m[0] == 'world_model')
    models = [('untrained', s, world_model, probe_latents.load_model(reference.ref, untrained=True, seed=s))
              for s in range(args.untrained_seeds)] + models
    make = probe_latents.policy_maker(args.policy, None)
    torch.manual_seed(args.seed)
    recording = probe_latents.play(args.game, make(args.game, args.seed), args.steps, args.seed, not args.no_progress)
    reference_features = probe_latents.encode(reference, recording, args.seed)
    rows = []
    for arm, seed, run, model in models:
        features = probe_latents.encode(model, recording, args.seed)
        probed, _ = probe_latents.probe_game(features, recording, args.folds, args.seed)
        probed += probe_latents.cca_rows(args.game, features, reference_features)
        rows += [{'arm': arm, 'seed': seed, 'run': run, **r} for r in probed]
        print(f'[probe_transfer] {model.label}: done', flush=True)
    return rows


def summary(rows: list[dict]) -> dict[tuple, tuple[float, float, int]]:
    """(arm, measure, object, coordinate, features) -> (mean, standard error, seeds)."""
    values = defaultdict(list)
    for r in rows:
        values[r['arm'], r['measure'], r.get('object'), r.get('coordinate'), r['features']].append(r['value'])
    return {key: (*mean_se(v), len(v)) for key, v in values.items()}


def _targets(rows: list[dict]) -> list[tuple[str, str]]:
    """(object, coordinate) pairs that vary (the paddle's y does not)."""
    return list(dict.fromkeys((r['object'], r['coordinate']) for r in rows
                              if r['measure'] == 'r2' and np.isfinite(r['value'])))


def table(rows: list[dict], heading: str) -> str:
    stats = summary(rows)
    targets = _targets(rows)
    arms = list(dict.fromkeys(r['arm'] for r in rows))

    def cell(key) -> str:
        mean, se, n = stats.get(key, (np.nan, 0, 0))
        return '–' if np.isnan(mean) else f'{mean:.2f} ± {se:.2f}' if n > 1 else f'{mean:.2f}'

    lines = [heading, '', '| arm | seeds | ' + ' | '.join(f'R² {o} {c} (h+z)' for o, c in targets)
             + ' | SVCCA with the world model (h+z) |', '|---|---|' + '---|' * (len(targets) + 1)]
    for arm in arms:
        seeds = len({r['seed'] for r in rows if r['arm'] == arm})
        lines.append(f'| {arm} | {seeds} | ' + ' | '.join(cell((arm, 'r2', o, c, 'hz')) for o, c in targets)
                     + f' | {cell((arm, "cca_mean", None, None, "hz"))} |')
    lines += ['', 'By part of the state, R² on h / on z:', '',
              '| arm | ' + ' | '.join(f'{o} {c}' for o, c in targets) + ' |', '|---|' + '---|' * len(targets)]
    for arm in arms:
        lines.append(f'| {arm} | ' + ' | '.join(f'{cell((arm, "r2", o, c, "h"))} / {cell((arm, "r2", o, c, "z"))}'
                                              for o, c in targets) + ' |')
    return '\n'.join(lines) + '\n'


def figure(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    stats = summary(rows)
    targets = _targets(rows)
    arms = list(dict.fromkeys(r['arm'] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    width = 0.8 / len(arms)
    for ax, (features, label) in zip(axes, (('h', 'h (deterministic)'), ('z', 'z (stochastic)'), ('hz', 'h and z'))):
        for j, arm in enumerate(arms):
            mean, se = zip(*[stats.get((arm, 'r2', o, c, features), (np.nan, 0, 0))[:2] for o, c in targets])
            ax.bar(np.arange(len(targets)) + (j - (len(arms) - 1) / 2) * width, mean, width, yerr=se,
                   capsize=2, label=arm)
        ax.set_xticks(np.arange(len(targets)), [f'{o} {c}' for o, c in targets], fontsize=8)
        ax.set_ylim(-0.2, 1)
        ax.axhline(0, color='k', lw=0.6)
        ax.set_title(f'probe on {label}', fontsize=9)
    axes[0].set_ylabel('R² on held-out episodes')
    save_figure(fig, axes, title, path, legend_rows=1)


def log_run(args, parent: str, paths: list[Path]) -> str:
    c = client()
    experiment = probe_latents.experiment_id(args.experiment, args.artifact_root)
    run_id = c.create_run(experiment, run_name=f'probe_transfer-{args.transfer}',
                          tags={'stage': 'probe_latents', 'source_run': parent, 'transfer': args.transfer}).info.run_id
    for path in paths:
        c.log_artifact(run_id, str(path), 'probe')
    c.set_terminated(run_id, 'FINISHED')
    return run_id


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--transfer', required=True, help='the transfer experiment name (its runs\' `transfer` tag)')
    parser.add_argument('--game', default='Breakout', help='the unseen game of that experiment')
    parser.add_argument('--steps', type=int, default=10_000)
    parser.add_argument('--policy', default='random', help='random | actor:<checkpoint> | dqn:<folder>')
    parser.add_argument('--untrained-seeds', type=int, default=3)
    parser.add_argument('--folds', type=int, default=5)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default=str(ROOT / 'docs'))
    parser.add_argument('--experiment', default='pydreamer', help='mlflow experiment of the probe run')
    parser.add_argument('--artifact-root', help='artifact location when the experiment is created here')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)
    args.game = probe_latents.minatar_game(args.game)
    torch.set_num_threads(1)
    parent, runs = arm_runs(args.transfer)
    rows = probe_arms(args, runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f'probe_transfer_{args.transfer}{suffix}' for suffix in ('.md', '.csv', '.png')]
    heading = (f'Linear probes of the object positions on {args.game}, transfer experiment {args.transfer}: '
               f'{args.steps} frames of the {args.policy} policy, the same for every model; ridge R² on '
               f'held-out episodes ({args.folds} folds), mean ± standard error over seeds.')
    paths[0].write_text(table(rows, heading))
    write_csv([{k: r.get(k, '') for k in FIELDS} for r in rows], FIELDS, paths[1])
    figure(rows, f'What the world models encode of {args.game} ({args.transfer})', paths[2])
    run_id = log_run(args, parent, paths)
    print(paths[0].read_text())
    print(f'wrote {", ".join(p.name for p in paths)} to {out}; mlflow run {run_id}')
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main, 'probe_transfer'))
