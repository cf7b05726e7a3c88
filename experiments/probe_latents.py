"""What does a world model encode? Linear probes of its latents for the objects of MinAtar games.

    python experiments/probe_latents.py --checkpoint runs:/<run_id>/checkpoints/latest.pt \
        --games Breakout Asterix --steps 10000 --policy random [--compare <checkpoint>] [--out docs]

For each game a data policy plays `--steps` steps (`random`; `actor`, the checkpoint's own actor;
`actor:<checkpoint>`, another checkpoint's; `dqn:<folder>`, the DQN agents of
`<folder>/<game>/model_*.pt` as dqn/train_agents.py writes them). Every observation is then
encoded through the posterior: the RSSM filters each episode with its recorded actions, and the
features are h (deterministic) and z (the posterior's class probabilities: the sample the heads
see is one noisy draw of them). The objects' positions are read from the raw MinAtar state
channels (`OBJECTS`; several cells of one channel give their centroid). Measures
(pydreamer/probes.py), per game and object, for x (column) and y (row):
  best |r|   the largest |Pearson r| of one feature (h or z) with the coordinate, on all frames;
  R²         a ridge probe on h, on z and on both, scored on held-out episodes: 5 folds of whole
             episodes, each predicted by a probe fitted on the other four, whose ridge penalty was
             chosen on one of them (R² over all held-out predictions);
  map        the mean, per 10×10 cell, of the feature best correlated with x or y;
over all games together: k-means (k = games) and its adjusted Rand index with the game; and with
`--compare`, the SVCCA canonical correlations between the two checkpoints' features per game.

Writes `probe_<name>.csv` (long format), `.md` (the printed table), `_maps.png`, `_r2.png` and
`_pca.png` (2-D PCA of the features coloured by game) to `--out`, and logs them as artifacts of an
mlflow run tagged `stage: probe_latents` and `source_run: <the checkpoint's run>` in the store of
MLFLOW_TRACKING_URI (default ./mlflow.db); `--experiment <new> --artifact-root <folder>` keeps its
artifacts out of a store's own artifact folder (one that is read-only, say).
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent

from dqn.policy import DQNPolicy
from experiments.curves import write_csv
from experiments.probe_figures import maps_figure, pca_figure, r2_figure
from pydreamer import probes
from pydreamer.checkpoint import CheckpointError, read_checkpoint
from pydreamer.config import ConfigError, build_config, load_sections
from pydreamer.envs import MINATAR_GAMES, make_env, minatar_game, minatar_module
from pydreamer.episodes import first_row, next_row
from pydreamer.launching.cli import run_cli
from pydreamer.models.dreamer import Dreamer
from pydreamer.policies import RandomPolicy
from pydreamer.preprocess import preprocess, preprocess_step
from pydreamer.pretrained import fetch_checkpoint
from pydreamer.tracking import client, get_run, log_params
from mlflow.entities import Metric  # after pydreamer.tracking, which imports mlflow lean

# object -> MinAtar state channel, per game; the player first
OBJECTS = {
    'Asterix': {'player': 'player', 'enemy': 'enemy', 'gold': 'gold'},
    'Breakout': {'player': 'paddle', 'ball': 'ball'},
    'Freeway': {'player': 'chicken', 'car': 'car'},
    'Seaquest': {'player': 'sub_front', 'enemy_fish': 'enemy_fish', 'enemy_sub': 'enemy_sub', 'diver': 'diver',
                 'friendly_bullet': 'friendly_bullet', 'enemy_bullet': 'enemy_bullet'},
    'SpaceInvaders': {'player': 'cannon', 'alien': 'alien', 'friendly_bullet': 'friendly_bullet',
                      'enemy_bullet': 'enemy_bullet'},
}
FEATURES = ('h', 'z', 'hz')
MIN_FRAMES = 100  # an object seen less often is not probed: five folds of it would be a handful of frames
CLUSTER_FRAMES = 2000  # frames per game for k-means and the PCA figure


def channel_index(game: str) -> dict[str, int]:
    """object -> index of its channel in the game's raw state, from minatar's own channel names."""
    channels = importlib.import_module(f'minatar.environments.{minatar_module(game)}').Env().channels
    return {name: channels[channel] for name, channel in OBJECTS[game].items()}


def object_positions(state: np.ndarray, channels: dict[str, int]) -> np.ndarray:
    """(O, 2) x (column), y (row) of each object in a raw (10, 10, C) bool state: the centroid of its
    channel's active cells, nan when it has none."""
    out = np.full((len(channels), 2), np.nan)
    for i, channel in enumerate(channels.values()):
        rows, columns = np.nonzero(state[:, :, channel])
        if len(rows):
            out[i] = columns.mean(), rows.mean()
    return out


@dataclass
class Recording:
    """The frames of one game, time-major over consecutive episodes (N frames)."""
    game: str
    objects: tuple[str, ...]
    image: np.ndarray      # (N, 10, 10) uint8 categories
    action: np.ndarray     # (N, A) one-hot: the action that led to the frame, zero on an episode's first
    reset: np.ndarray      # (N,) bool, true on an episode's first frame
    episode: np.ndarray    # (N,) int
    position: np.ndarray   # (N, O, 2) x, y of each object; nan when absent


def play(game: str, policy, steps: int, seed: int, progress: bool = True) -> Recording:
    """`steps` frames of `policy` (obs -> (action, metrics)) on the game's full-action (-v0) env;
    the last episode is cut at `steps`."""
    env = make_env(f'MinAtar/{game}-v0', seed=seed)
    channels = channel_index(game)
    rows, positions, episodes = [], [], []
    episode, done = -1, True
    for _ in tqdm(range(steps), desc=f'playing {game}', unit='step', disable=not progress, leave=False):
        if done:
            obs, episode, done = env.reset(), episode + 1, False
            row = first_row(obs, env.action_dim)
        else:
            action, _ = policy({**obs, 'reset': rows[-1]['reset']})
            obs, reward, terminated, truncated = env.step(action)
            row = next_row(obs, action, env.action_dim, reward, terminated)
            done = terminated or truncated
        rows.append(row)
        positions.append(object_positions(obs['minatar_state'], channels))
        episodes.append(episode)
    env.close()
    return Recording(game, tuple(channels), np.stack([r['image'] for r in rows]),
                     np.stack([r['action'] for r in rows]), np.array([r['reset'] for r in rows]),
                     np.array(episodes), np.stack(positions))


# --- models and data policies

@dataclass
class Model:
    dreamer: torch.nn.Module
    conf: object       # the checkpoint's resolved config
    ref: str           # what the user gave: a path or an mlflow URI
    run_id: str | None  # the mlflow run it belongs to, when the reference names one
    label: str         # for titles and file names: the run's name or the file's stem


def run_of(ref: str) -> str | None:
    match = re.fullmatch(r'runs:/([^/]+)/.+', ref)
    return match[1] if match else None


def checkpoint_config(saved: dict):
    """The checkpoint's config on today's defaults (keys added since it was saved take their default)."""
    known = load_sections()['defaults']
    return build_config(['defaults'], {k: v for k, v in saved.items() if k in known})


def load_model(ref: str, untrained: bool = False, seed: int = 0) -> Model:
    """The Dreamer of a checkpoint (path or `runs:/<id>/...`), in eval mode; with `untrained`, a fresh
    initialisation of the same architecture (seeded), the reference for what a random network encodes."""
    run_id = run_of(ref)
    label = get_run(run_id).info.run_name if run_id else Path(ref).stem  # an unknown run is one sentence
    with tempfile.TemporaryDirectory(prefix='pydreamer-probe-') as tmp:
        local = fetch_checkpoint(ref, tmp)
        if local is None:
            raise CheckpointError(f'Checkpoint {ref} does not exist.')
        payload = read_checkpoint(local, mmap=True, name=ref)
        conf = checkpoint_config(payload['config'])
        if not (conf.image_categorical and conf.image_size == 10 and conf.action_dim == 6):
            raise CheckpointError(f'Checkpoint {ref} models {conf.image_size}x{conf.image_size} images with '
                                  f'{conf.action_dim} actions; this probe needs a MinAtar model '
                                  f'(10x10 categorical images, 6 actions).')
        torch.manual_seed(seed)
        dreamer = Dreamer(conf)
        if not untrained:
            dreamer.load_state_dict(payload['model'])
    return Model(dreamer.eval(), conf, ref, run_id, f'untrained-{label}' if untrained else label)


class ActorPolicy:
    """A model's actor playing from its own posterior state, as the generators' network policy does."""

    def __init__(self, model: Model):
        self.model = model
        self.state = None
        self.previous = None

    def __call__(self, obs: dict) -> tuple[int, dict]:
        A = self.model.conf.action_dim
        if obs['reset']:
            self.state, self.previous = self.model.dreamer.init_state(1), np.zeros(A, np.float32)
        step = {'image': obs['image'][None], 'action': self.previous[None], 'reset': np.array([obs['reset']])}
        action, self.state, _ = self.model.dreamer.policy(preprocess_step(step, self.model.conf), self.state)
        index = int(action[0].argmax())
        self.previous = np.eye(A, dtype=np.float32)[index]
        return index, {}


def policy_maker(spec: str, model: Model | None):
    """(game, seed) -> data policy for `random`, `actor` (the probed model's), `actor:<checkpoint>` or
    `dqn:<folder>`; the spec is checked and any checkpoint loaded once, before anything is played."""
    kind, _, arg = spec.partition(':')
    if spec == 'random':
        return lambda game, seed: RandomPolicy(6, seed)
    if spec == 'actor' and model is not None:
        return lambda game, seed: ActorPolicy(model)
    if kind == 'actor' and arg:
        actor = load_model(arg)
        return lambda game, seed: ActorPolicy(actor)
    if kind == 'dqn' and arg:
        return lambda game, seed: _dqn_policy(spec, Path(arg), game, seed)
    raise ConfigError(f'--policy {spec!r} is not a data policy; expected random, actor, actor:<checkpoint> '
                      f'or dqn:<folder>.')


def _dqn_policy(spec: str, folder: Path, game: str, seed: int):
    game_folder = folder / minatar_module(game)
    try:
        return DQNPolicy(game_folder if game_folder.is_dir() else folder, seed=seed)
    except (OSError, ValueError) as e:
        raise ConfigError(f'--policy {spec} cannot play {game}: {e}') from None


# --- features

def posterior_mean(post: torch.Tensor, classes: int) -> torch.Tensor:
    """The expectation of z under the posterior: class probabilities (..., S·K), or the Gaussian mean."""
    if classes:
        return post.float().unflatten(-1, (-1, classes)).softmax(-1).flatten(-2)
    return post.float().chunk(2, -1)[0]


@torch.no_grad()
def encode(model: Model, recording: Recording, seed: int = 0, chunk: int = 1000) -> dict[str, np.ndarray]:
    """Features of every frame: h (N, D), z (N, Z) and both (N, D + Z). One (T, 1) sequence through the
    RSSM: the resets in it start each episode from the zero state, and the state carries across chunks.
    Seeded, so that every model sees the same posterior-sampling noise."""
    wm, conf = model.dreamer.wm, model.conf
    torch.manual_seed(seed)
    state = wm.init_state(1)
    hs, zs = [], []
    for start in range(0, len(recording.image), chunk):
        part = slice(start, start + chunk)
        obs = preprocess({'image': recording.image[part, None], 'action': recording.action[part, None],
                          'reset': recording.reset[part, None],
                          'reward': np.zeros((len(recording.image[part]), 1), np.float32)}, conf)
        seq = wm.rssm(wm.encoder(obs), obs['action'], obs['reset'], state)   # (T, 1, 1, ...)
        state = seq.out_state
        hs.append(seq.h[:, 0, 0].float())
        zs.append(posterior_mean(seq.post[:, 0, 0], wm.rssm.classes))
    h, z = torch.cat(hs).numpy(), torch.cat(zs).numpy()
    return {'h': h, 'z': z, 'hz': np.concatenate([h, z], 1)}


# --- measures

def probe_game(features: dict[str, np.ndarray], recording: Recording, folds: int = 5, seed: int = 0
               ) -> tuple[list[dict], dict[str, tuple[str, np.ndarray]]]:
    """Long-format rows (CSV_FIELDS) of the best single-feature |r| and the probe R² per object and
    coordinate, and per object the 10×10 map of its best feature: {object: (feature name, map)}."""
    rows, maps = [], {}
    for o, name in enumerate(recording.objects):
        present = ~np.isnan(recording.position[:, o, 0])
        episodes = len(np.unique(recording.episode[present]))
        base = {'game': recording.game, 'object': name, 'frames': int(present.sum()), 'episodes': episodes}
        if present.sum() < MIN_FRAMES or episodes < 2:
            rows += [{**base, 'measure': 'r2', 'coordinate': c, 'features': f, 'value': np.nan,
                      'detail': f'not probed: under {MIN_FRAMES} frames or 2 episodes'} for c in 'xy' for f in FEATURES]
            continue
        position = recording.position[present, o]                             # (n, 2)
        r = {f: np.abs(np.stack([probes.pearson(features[f][present], position[:, c]) for c in (0, 1)]))
             for f in ('h', 'z')}                                              # (2, F_f)
        best = _best_feature(r)
        for c, coordinate in enumerate('xy'):
            f, i, value = best[c]
            rows.append({**base, 'measure': 'best_abs_r', 'coordinate': coordinate, 'features': f,
                         'value': value, 'detail': f'{f}{i}' if f else ''})
        fold = probes.episode_folds(recording.episode[present], folds, seed)
        for f in FEATURES:
            r2 = probes.ridge_cv_r2(features[f][present], position, fold)
            rows += [{**base, 'measure': 'r2', 'coordinate': c, 'features': f, 'value': float(v)}
                     for c, v in zip('xy', r2)]
        f, i, _ = max(best, key=lambda b: -1 if np.isnan(b[2]) else b[2])
        if f:
            maps[name] = (f'{f}{i}', probes.position_map(features[f][present, i], position[:, 0], position[:, 1]))
    return rows, maps


def _best_feature(r: dict[str, np.ndarray]) -> list[tuple[str, int, float]]:
    """Per coordinate, the (feature set, index, |r|) of the best single feature; ('', -1, nan) when the
    coordinate never changes."""
    out = []
    for c in (0, 1):
        candidates = [(f, int(np.nanargmax(v[c])), float(np.nanmax(v[c]))) for f, v in r.items()
                      if not np.all(np.isnan(v[c]))]
        out.append(max(candidates, key=lambda b: b[2]) if candidates else ('', -1, np.nan))
    return out


def cluster_rows(features: dict[str, dict[str, np.ndarray]], seed: int = 0) -> tuple[list[dict], dict]:
    """k-means over the features of all games (k = games, CLUSTER_FRAMES frames drawn per game) and its
    adjusted Rand index with the game; also the frames' 2-D PCA scores for the figure."""
    rng = np.random.default_rng(seed)
    games = list(features)
    drawn = {g: rng.choice(len(features[g]['h']), min(CLUSTER_FRAMES, len(features[g]['h'])), replace=False)
             for g in games}
    label = np.concatenate([np.full(len(drawn[g]), i) for i, g in enumerate(games)])
    rows = []
    for f in FEATURES:
        X = np.concatenate([features[g][f][drawn[g]] for g in games])
        ari = probes.adjusted_rand_index(probes.kmeans(X, len(games), seed), label)
        rows.append({'measure': 'ari', 'game': 'all', 'features': f, 'value': ari, 'frames': len(X),
                     'detail': f'k={len(games)}'})
    scores, explained = probes.pca(np.concatenate([features[g]['hz'][drawn[g]] for g in games]), 2)
    return rows, {'games': games, 'label': label, 'scores': scores, 'explained': explained}


def cca_rows(game: str, a: dict[str, np.ndarray], b: dict[str, np.ndarray], dims: int = 20) -> list[dict]:
    rows = []
    for f in FEATURES:
        rho = probes.cca(a[f], b[f], dims)
        rows += [{'measure': 'cca_mean', 'game': game, 'features': f, 'value': float(rho.mean()),
                  'frames': len(a[f]), 'detail': f'{len(rho)} dims'},
                 {'measure': 'cca_first', 'game': game, 'features': f, 'value': float(rho[0]),
                  'frames': len(a[f]), 'detail': f'{len(rho)} dims'}]
    return rows


# --- outputs

CSV_FIELDS = ['measure', 'game', 'object', 'coordinate', 'features', 'value', 'detail', 'frames', 'episodes']


def _cell(value: float, digits: int = 2) -> str:
    return '–' if value is None or np.isnan(value) else f'{value:.{digits}f}'


def table(rows: list[dict], heading: str) -> str:
    """The printed (markdown) table: per game and object the best |r| and the R² on h / z / both."""
    value = {(r['measure'], r['game'], r.get('object'), r.get('coordinate'), r['features']): r['value'] for r in rows}
    best = {(r['game'], r['object'], r['coordinate']): r for r in rows if r['measure'] == 'best_abs_r'}
    lines = [heading, '', '| game | object | frames (episodes) | best \\|r\\| x | best \\|r\\| y '
             '| R² x (h / z / h+z) | R² y (h / z / h+z) |', '|---|---|---|---|---|---|---|']
    for r in rows:
        if r['measure'] != 'r2' or r['coordinate'] != 'x' or r['features'] != 'h':
            continue
        game, name = r['game'], r['object']
        cells = [f'{_cell(b["value"])} ({b["detail"]})' if b and b['detail'] else '–'
                 for b in (best.get((game, name, c)) for c in 'xy')]
        r2 = [' / '.join(_cell(value['r2', game, name, c, f]) for f in FEATURES) for c in 'xy']
        lines.append(f'| {game} | {name} | {r["frames"]} ({r["episodes"]}) | {cells[0]} | {cells[1]} '
                     f'| {r2[0]} | {r2[1]} |')
    summary = list(dict.fromkeys((r['measure'], r['game']) for r in rows if r['measure'] in ('ari', 'cca_mean', 'cca_first')))
    if summary:
        lines += ['', '| measure | game | h | z | h+z |', '|---|---|---|---|---|']
        lines += [f'| {measure} | {game} | ' + ' | '.join(_cell(value[measure, game, None, None, f]) for f in FEATURES)
                  + ' |' for measure, game in summary]
    return '\n'.join(lines) + '\n'


def experiment_id(name: str, artifact_root: str | None) -> str:
    """The mlflow experiment for probe runs, created with its artifacts at `artifact_root` if it is new."""
    c = client()
    experiment = c.get_experiment_by_name(name)
    if experiment is None:
        return c.create_experiment(name, artifact_location=artifact_root)
    if artifact_root and experiment.artifact_location.rstrip('/') != artifact_root.rstrip('/'):
        raise ConfigError(f'Experiment {name!r} exists with its artifacts at {experiment.artifact_location}; '
                          f'--artifact-root applies to a new experiment only.')
    return experiment.experiment_id


def log_run(model: Model, args, files: list[Path], rows: list[dict]) -> str:
    """An mlflow run tagged stage probe_latents and source_run, holding the outputs as artifacts."""
    c = client()
    tags = {'stage': 'probe_latents', 'source_checkpoint': model.ref, 'untrained': str(args.untrained).lower()}
    if model.run_id:
        tags['source_run'] = model.run_id
    if args.compare:
        tags['compare_checkpoint'] = args.compare
    run_id = c.create_run(experiment_id(args.experiment, args.artifact_root), run_name=f'probe-{args.name}',
                          tags=tags).info.run_id
    log_params(run_id, {'games': ','.join(args.games), 'steps': args.steps, 'policy': args.policy,
                        'seed': args.seed, 'folds': args.folds})
    metrics = [Metric(f'probe/{r["measure"]}_{r["features"]}_{r["game"]}' +
                      (f'_{r["object"]}_{r["coordinate"]}' if r.get('object') else ''), float(r['value']), 0, 0)
               for r in rows if r['measure'] in ('r2', 'ari', 'cca_mean') and np.isfinite(r['value'])]
    for i in range(0, len(metrics), 1000):
        c.log_batch(run_id, metrics=metrics[i:i + 1000])
    for path in files:
        c.log_artifact(run_id, str(path), 'probe')
    c.set_terminated(run_id, 'FINISHED')
    return run_id


def write_outputs(rows: list[dict], maps: dict, cluster: dict | None, out: Path, name: str, heading: str
                  ) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f'probe_{name}{suffix}' for suffix in ('.csv', '.md', '_maps.png', '_r2.png')]
    write_csv([{k: r.get(k, '') for k in CSV_FIELDS} for r in rows], CSV_FIELDS, paths[0])
    paths[1].write_text(table(rows, heading))
    maps_figure(maps, f'Best-correlated feature per position: {name}', paths[2])
    r2_figure(rows, f'Linear probe of object positions: {name}', paths[3])
    if cluster:
        paths.append(out / f'probe_{name}_pca.png')
        pca_figure(cluster, f'PCA of h and z, coloured by game: {name}', paths[-1])
    return paths


# --- the command

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', required=True, help='a checkpoint file or runs:/<run_id>/checkpoints/latest.pt')
    parser.add_argument('--games', nargs='+', default=list(MINATAR_GAMES),
                        help='MinAtar games (Breakout, space_invaders and MinAtar/Seaquest-v0 forms); default: all five')
    parser.add_argument('--steps', type=int, default=10_000, help='frames played per game')
    parser.add_argument('--policy', default='random', help='random | actor | actor:<checkpoint> | dqn:<folder>')
    parser.add_argument('--compare', help='a second checkpoint: SVCCA between the two on the same frames')
    parser.add_argument('--untrained', action='store_true',
                        help="probe a fresh initialisation of the checkpoint's architecture instead (a reference)")
    parser.add_argument('--folds', type=int, default=5, help='cross-validation folds of whole episodes')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--name', help='output name (default: the run name or file stem of the checkpoint)')
    parser.add_argument('--out', default=str(ROOT / 'docs'), help='folder for the CSV, table and figures')
    parser.add_argument('--experiment', default='pydreamer', help='mlflow experiment of the probe run')
    parser.add_argument('--artifact-root', help='artifact location when the experiment is created here')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    if args.steps < 1 or args.folds < 2:
        parser.error('--steps must be at least 1 and --folds at least 2')
    args.games = list(dict.fromkeys(minatar_game(g) for g in args.games))
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    model = load_model(args.checkpoint, args.untrained, args.seed)
    other = load_model(args.compare) if args.compare else None
    make = policy_maker(args.policy, model)
    policies = {game: make(game, args.seed + i) for i, game in enumerate(args.games)}  # any error before playing
    args.name = args.name or model.label
    rows, maps, features = [], {}, {}
    for i, game in enumerate(args.games):
        torch.manual_seed(args.seed + i)
        recording = play(game, policies[game], args.steps, args.seed + i, not args.no_progress)
        features[game] = encode(model, recording, args.seed)
        game_rows, maps[game] = probe_game(features[game], recording, args.folds, args.seed)
        rows += game_rows
        if other is not None:
            rows += cca_rows(game, features[game], encode(other, recording, args.seed))
    cluster = None
    if len(args.games) > 1:
        cluster_part, cluster = cluster_rows(features, args.seed)
        rows += cluster_part
    heading = (f'Probe of {model.label} ({model.ref}{", untrained" if args.untrained else ""}): '
               f'{args.steps} frames per game, policy {args.policy}, seed {args.seed}, {args.folds} episode folds'
               + (f'; SVCCA against {other.label}' if other else '') + '.')
    paths = write_outputs(rows, maps, cluster, Path(args.out), args.name, heading)
    run_id = log_run(model, args, paths, rows)
    print(paths[1].read_text())
    print(f'wrote {", ".join(p.name for p in paths)} to {args.out}; mlflow run {run_id}')
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main, 'probe_latents'))
