"""Playing a trained agent in the real environment (evaluate.py).

An agent reference is a local path or an mlflow artifact URI (`runs:/<run_id>/<path>`) of
- a Dreamer checkpoint (`checkpoints/latest.pt`): its actor, fed the observations one step at a time;
- a DQN agent folder of `model_<n>.pt` files (or one such file): MinAtar, as `dqn.policy.DQNPolicy`
  plays it for the generators, one checkpoint of the folder drawn per episode;
- a DQN_modern agent folder of `model_<step>.gz` files: Atari, as `atari_net.AtariNetPolicy`.
Before anything is played the agent must fit the environment: same action count, same kind of
observation; otherwise one sentence names both.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from pydreamer.checkpoint import CheckpointError, read_checkpoint
from pydreamer.config import Config, build_config
from pydreamer.envs import Env

DQN_FILE = re.compile(r'model_\d+\.pt')
ATARI_ACTION_REPEAT = 4  # the frame skip that the atari preset and the DQN_modern agents use


def observation_kind(obs: dict) -> str:
    """What an environment gives, in words: '10x10 categorical images', '64x64x3 images', 'vectors of size 4'."""
    if 'image' in obs:
        image = obs['image']
        shape = 'x'.join(map(str, image.shape))
        return f'{shape} categorical images' if image.ndim == 2 else f'{shape} images'
    return f'vectors of size {obs["vecobs"].shape[0]}'


def model_observation_kind(conf: Config) -> str:
    """What a Dreamer of this config reads, in the words of `observation_kind`."""
    if conf.image_encoder != 'none':
        size = f'{conf.image_size}x{conf.image_size}'
        return f'{size} categorical images' if conf.image_categorical else f'{size}x{conf.image_channels} images'
    return f'vectors of size {conf.vecobs_size}'


class DreamerActor:
    """The actor of a Dreamer as a policy: obs dict (with `reset`) -> (action index, metrics)."""

    def __init__(self, model, conf: Config, greedy: bool):
        self.model, self.conf, self.greedy = model, conf, greedy
        self._state = None
        self._prev_action = np.zeros(conf.action_dim, np.float32)

    def __call__(self, obs: dict) -> tuple[int, dict]:
        from pydreamer.preprocess import preprocess_step
        if obs['reset']:
            self._state = self.model.init_state(1)
            self._prev_action[:] = 0
        step = {k: obs[k][np.newaxis] for k in ('image', 'vecobs') if k in obs}
        step.update(action=self._prev_action[np.newaxis], reset=np.array([obs['reset']]))
        action, self._state, metrics = self.model.policy(preprocess_step(step, self.conf), self._state,
                                                         greedy=self.greedy)
        index = int(action[0].argmax())
        self._prev_action = np.eye(self.conf.action_dim, dtype=np.float32)[index]
        return index, {'policy_value': float(metrics['policy_value'][0])}


class DreamerSource:
    kind = 'dreamer'

    def __init__(self, path: Path, name: str):
        self.name = name
        self.payload = read_checkpoint(path, mmap=True, name=name)
        # keys added to the config since the checkpoint was written take their defaults
        self.conf = Config({**build_config(['defaults']).to_dict(), **self.payload['config']})
        self.action_repeat = self.conf.env_action_repeat
        self.tags = {'checkpoint_step': str(self.payload['step']), 'trained_env_id': str(self.conf.env_id)}

    def check(self, env: Env, obs: dict) -> None:
        reads, gives = model_observation_kind(self.conf), observation_kind(obs)
        if reads != gives:  # first: another kind of environment usually has another action count too
            raise CheckpointError(f'Checkpoint {self.name} reads {reads} but {env.env_id} gives {gives}.')
        if self.conf.action_dim != env.action_dim:
            raise CheckpointError(f'Checkpoint {self.name} was trained with {self.conf.action_dim} actions '
                                  f'but {env.env_id} has {env.action_dim}.')

    def policy(self, env: Env, greedy: bool, seed: int):
        from pydreamer.models.dreamer import Dreamer
        torch.manual_seed(seed)
        model = Dreamer(self.conf).eval()
        model.load_state_dict(self.payload['model'])
        return DreamerActor(model, self.conf, greedy)


class DQNSource:
    kind = 'dqn'

    def __init__(self, path: Path, name: str):
        from dqn.networks import checkpoint_shape, read_state_dict
        from dqn.checkpoints import find_checkpoints
        self.name = name
        self.paths = find_checkpoints(path)
        _, self.channels, self.n_actions = checkpoint_shape(read_state_dict(self.paths[0]), name)
        self.action_repeat = 1
        self.tags = {'dqn_checkpoints': ', '.join(p.name for p in self.paths)}

    def check(self, env: Env, obs: dict) -> None:
        if 'minatar_state' not in obs:
            raise CheckpointError(f'DQN agents {self.name} play MinAtar, but {env.env_id} gives {observation_kind(obs)}.')
        channels = obs['minatar_state'].shape[-1]
        if channels != self.channels:
            raise CheckpointError(f'DQN agents {self.name} read {self.channels} observation channels but '
                                  f'{env.env_id} gives {channels}.')
        if self.n_actions != env.action_dim:
            raise CheckpointError(f'DQN agents {self.name} have {self.n_actions} actions but '
                                  f'{env.env_id} has {env.action_dim}.')

    def policy(self, env: Env, greedy: bool, seed: int):
        from dqn.policy import DQNPolicy
        return DQNPolicy(self.paths, n_actions=env.action_dim, epsilon=0.0 if greedy else 0.01, seed=seed)


class AtariNetSource:
    kind = 'atari_net'

    def __init__(self, path: Path, name: str):
        from atari_net import find_checkpoints
        self.name = name
        self.folder = path
        self.paths = find_checkpoints(path)
        self.action_repeat = ATARI_ACTION_REPEAT
        self.tags = {'atari_net_checkpoints': ', '.join(p.name for p in self.paths)[:5000]}

    def check(self, env: Env, obs: dict) -> None:
        from atari_net import ale_game, ale_game_name
        from atari_net.checkpoint import load_atari_net
        if 'screen_gray' not in obs:
            raise CheckpointError(f'DQN_modern agents {self.name} play Atari, but {env.env_id} gives '
                                  f'{observation_kind(obs)}.')
        n_actions = len(ale_game(ale_game_name(env.env_id)).minimal_actions)
        try:
            load_atari_net(self.paths[0], n_actions)
        except ValueError as e:  # names the file and both action counts
            raise CheckpointError(f'{str(e).rstrip(".")} ({env.env_id}).') from None

    def policy(self, env: Env, greedy: bool, seed: int):
        from atari_net import AtariNetPolicy, ale_game_name
        return AtariNetPolicy(self.folder, ale_game_name(env.env_id), epsilon=0.0 if greedy else 0.001, seed=seed)


@contextlib.contextmanager
def agent_errors() -> Iterator[None]:
    """The dqn and atari_net loaders' errors (sentences that name the file) as CheckpointError, which
    the launcher reports as one sentence."""
    try:
        yield
    except CheckpointError:
        raise
    except (ValueError, OSError) as e:
        raise CheckpointError(str(e)) from None


def read_source(path: Path, name: str):
    """The agent at a local path: a Dreamer checkpoint file, a DQN file or folder, or a DQN_modern folder."""
    if not path.exists():
        raise CheckpointError(f'Agent {name} does not exist; expected a Dreamer checkpoint, a DQN folder or '
                              f'a DQN_modern folder.')
    with agent_errors():
        if path.is_file():
            return DQNSource(path, name) if DQN_FILE.fullmatch(path.name) else DreamerSource(path, name)
        if any(path.glob('model_*.pt')):
            return DQNSource(path, name)
        if any(path.rglob('model_*.gz')):
            return AtariNetSource(path, name)
    raise CheckpointError(f'Folder {name} holds neither DQN checkpoints (model_<n>.pt) nor DQN_modern '
                          f'checkpoints (model_<step:08d>.gz).')


@dataclass
class Episodes:
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)  # the first episode's images, up to video_steps

    def summary(self) -> dict[str, float]:
        return {'eval/return': float(np.mean(self.returns)), 'eval/return_stderr': stderr(self.returns),
                'eval/length': float(np.mean(self.lengths)), 'eval/length_stderr': stderr(self.lengths),
                'eval/episodes': len(self.returns)}


def stderr(values: list[float]) -> float:
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def play(policy, env: Env, episodes: int, video_steps: int) -> Episodes:
    """Play whole episodes (the env's time limit ends the long ones), keeping the first one's frames."""
    out = Episodes()
    for episode in tqdm(range(episodes), desc=f'evaluate {env.env_id}', unit='episode'):
        obs, reset, total, length = env.reset(), True, 0.0, 0
        while True:
            if episode == 0 and 'image' in obs and len(out.frames) < video_steps:
                out.frames.append(obs['image'].copy())
            action, _ = policy({**obs, 'reset': reset})
            obs, reward, terminated, truncated = env.step(action)
            total, length, reset = total + reward, length + 1, False
            if terminated or truncated:
                break
        if episode == 0 and 'image' in obs and len(out.frames) < video_steps:
            out.frames.append(obs['image'].copy())  # the last frame, which no action follows
        out.returns.append(total)
        out.lengths.append(length)
    return out


@dataclass(frozen=True)
class Request:
    """What evaluate.py was asked (its flags)."""
    checkpoint: str
    env_id: str
    episodes: int = 20
    greedy: bool = False
    seed: int = 0
    time_limit: int = 27_000
    video_steps: int = 1000
    experiment: str = 'pydreamer'
    run_name: str = ''
    run_tags: str = ''           # a YAML map of extra tags


def evaluate(request: Request, work_dir: str) -> tuple[str, str]:
    """Check the agent against the environment, open an mlflow run, play, log; returns (run id, table).
    A bad reference fails before the run exists."""
    from pydreamer.envs import make_env
    from pydreamer.policies import local_reference
    with local_reference(request.checkpoint) as path:
        source = read_source(path, request.checkpoint)
        atari = request.env_id.startswith(('Atari-', 'AtariGray-'))
        env_args = dict(action_repeat=source.action_repeat if atari else 1, time_limit=request.time_limit)
        probe = make_env(request.env_id, **env_args)  # its own: the played env's first reset is seeded
        source.check(probe, probe.reset())
        probe.close()
        env = make_env(request.env_id, **env_args, seed=request.seed)
        with agent_errors():  # DQN folders: the files after the first are read here
            policy = source.policy(env, request.greedy, request.seed)
    run_id, label = _start_run(request, source)
    try:
        episodes = play(policy, env, request.episodes, request.video_steps)
        table = _table(label, request, episodes)
        _log(run_id, request, episodes, table, work_dir)
    except BaseException as e:
        _end_run(run_id, 'KILLED' if isinstance(e, KeyboardInterrupt) else 'FAILED')
        raise
    finally:
        env.close()
    _end_run(run_id, 'FINISHED')
    return run_id, table


def _source_run(ref: str) -> str:
    from pydreamer.policies import is_artifact_uri
    return ref.removeprefix('runs:/').partition('/')[0] if is_artifact_uri(ref) else ''


def _start_run(request: Request, source) -> tuple[str, str]:
    """A new run tagged with the stage and its source; returns (run id, how the table names the agent)."""
    from pydreamer.envs import game_name
    from pydreamer.tracking import client, experiment_id, get_run, log_params, parse_tags
    source_run = _source_run(request.checkpoint)
    source_name = get_run(source_run).info.run_name if source_run else Path(request.checkpoint).name
    label = source_name if source_run else request.checkpoint
    if 'checkpoint_step' in source.tags:
        label += f' (step {source.tags["checkpoint_step"]})'
    tags = {'stage': 'evaluate', 'arm': 'evaluate', 'game': game_name(request.env_id), 'seed': str(request.seed),
            'source_run_id': source_run, 'source': request.checkpoint, 'agent': source.kind,
            'env_id': request.env_id, 'policy': 'greedy' if request.greedy else 'sampled', **source.tags,
            **parse_tags(request.run_tags)}
    run = client().create_run(experiment_id(request.experiment), run_name=request.run_name or f'evaluate-{source_name}',
                       tags={k: v for k, v in tags.items() if v})
    log_params(run.info.run_id, dataclasses.asdict(request))
    return run.info.run_id, label


def _end_run(run_id: str, status: str) -> None:
    from pydreamer.tracking import end_run
    end_run(run_id, status)


def _table(label: str, request: Request, episodes: Episodes) -> str:
    s = episodes.summary()
    return '\n'.join([
        '| agent | env | policy | episodes | return (mean ± s.e.) | min | max | episode length (mean ± s.e.) |',
        '|---|---|---|---|---|---|---|---|',
        f'| {label} | {request.env_id} | {"greedy" if request.greedy else "sampled"} | {len(episodes.returns)} '
        f'| {s["eval/return"]:.2f} ± {s["eval/return_stderr"]:.2f} | {min(episodes.returns):g} '
        f'| {max(episodes.returns):g} | {s["eval/length"]:.1f} ± {s["eval/length_stderr"]:.1f} |'])


def _log(run_id: str, request: Request, episodes: Episodes, table: str, work_dir: str) -> None:
    """Summary metrics at step 0, each episode's return and length at its index, the table and the video."""
    from pydreamer.artifacts import ArtifactFolder
    from pydreamer.dreams import episode_video, save_gif
    from pydreamer.tracking import MetricsLogger
    MetricsLogger(run_id).log_many(
        [(episodes.summary(), 0)] + [({'eval/episode_return': r, 'eval/episode_length': n}, i)
                                     for i, (r, n) in enumerate(zip(episodes.returns, episodes.lengths))])
    folder = ArtifactFolder(run_id)
    path = Path(work_dir) / 'evaluation.md'
    path.write_text(table + '\n\nreturns: ' + ' '.join(f'{r:g}' for r in episodes.returns) + '\n')
    folder.upload(path)
    if episodes.frames:
        path = Path(work_dir) / 'episode_0.gif'
        caption = f'  (episode return {episodes.returns[0]:g})'
        save_gif(episode_video(episodes.frames, request.env_id, caption), path, frame_ms=100)
        folder.upload_file(path, 'videos')
