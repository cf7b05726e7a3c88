"""Data policies used by generators.

A policy maps an observation dict (with `reset` true on an episode's first observation) to an
action index and a dict of metrics; it knows nothing about files or mlflow runs beyond loading
its own weights. The policies that need torch are imported only when made, so that launchers,
which check the policies of a config before starting anything, stay light.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from pydreamer.config import PROJECT_ROOT, Config

POLICY_NAMES = ('random', 'network', 'dqn', 'atari_net')


class RandomPolicy:
    def __init__(self, action_dim: int, seed: int):
        self.action_dim = action_dim
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: dict) -> tuple[int, dict]:
        return int(self.rng.integers(self.action_dim)), {}


def checkpoint_folder(conf: Config, key: str, env_id: str) -> str:
    """The checkpoint folder that the map in config key `key` gives for `env_id`: an mlflow
    artifact URI as it is, a relative path taken from the project root (where
    `dqn/train_agents.py` writes by default)."""
    folders = getattr(conf, key)
    if not isinstance(folders, dict) or env_id not in folders:
        known = ', '.join(folders) if isinstance(folders, dict) else 'nothing'
        raise ValueError(f'Config key {key} must map {env_id} to a checkpoint folder; it maps {known}.')
    ref = str(folders[env_id])
    return ref if is_artifact_uri(ref) or Path(ref).is_absolute() else str(PROJECT_ROOT / ref)


def is_artifact_uri(ref: str) -> bool:
    return ref.startswith('runs:/')


@contextlib.contextmanager
def local_reference(ref: str) -> Iterator[Path]:
    """A local path for `ref`: the path itself, or for an artifact of an mlflow run
    (`runs:/<run_id>/<path>`, a file or a folder) a download of it that lasts as long as the block."""
    if not is_artifact_uri(ref):
        yield Path(ref).expanduser()
        return
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from pydreamer import artifacts  # noqa: F401 -- quiets mlflow's per-file progress bars
    from pydreamer.checkpoint import CheckpointError
    from pydreamer.tracking import get_run
    run_id, _, artifact_path = ref.removeprefix('runs:/').partition('/')
    get_run(run_id)  # an unknown run is one sentence, not mlflow's message
    with tempfile.TemporaryDirectory(prefix='pydreamer-artifact-') as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=tmp)
        except MlflowException:
            raise CheckpointError(f'Run {run_id} has no artifact {artifact_path or "/"} ({ref}).') from None
        yield Path(local)


def check_policy_source(name: str, conf: Config, env_id: str, action_dim: int) -> None:
    """What a launcher checks of a policy before any process starts: its checkpoints exist (a DQN
    folder holds model_<n>.pt files). The generators load them."""
    if name == 'dqn':
        from dqn.checkpoints import find_checkpoints
        with local_reference(checkpoint_folder(conf, 'dqn_dir', env_id)) as folder:
            find_checkpoints(folder)
    elif name == 'atari_net':  # its loader checks the game's actions as well: made once here
        make_policy(name, conf, '', env_id, action_dim, seed=0)
    elif name not in POLICY_NAMES:
        raise ValueError(f'Unknown policy {name!r} for {env_id}; expected one of: {", ".join(POLICY_NAMES)}.')


def make_policy(name: str, conf: Config, run_id: str, env_id: str, action_dim: int, seed: int):
    if name == 'random':
        return RandomPolicy(action_dim, seed)
    if name == 'dqn':
        from dqn.policy import DQNPolicy
        # the policy holds every network in memory, so a downloaded folder may go after this
        with local_reference(checkpoint_folder(conf, 'dqn_dir', env_id)) as folder:
            return DQNPolicy(folder, n_actions=action_dim, seed=seed)
    if name == 'atari_net':
        from atari_net import AtariNetPolicy, ale_game_name
        return AtariNetPolicy(checkpoint_folder(conf, 'atari_net_dir', env_id), ale_game_name(env_id), seed=seed)
    if name == 'network':
        from pydreamer.network_policy import NetworkPolicy
        fallback = None
        start = max(conf.actor_warmup_steps, conf.policy_start_step)
        if start > 0 and conf.generator_prefill_policy != 'network':
            fallback = make_policy(conf.generator_prefill_policy, conf, run_id, env_id, action_dim, seed + 1)
        return NetworkPolicy(conf, run_id, action_dim, seed, conf.policy_reload_interval,
                             fallback=fallback, min_step=start)
    raise ValueError(f'Unknown policy {name!r} for {env_id}; expected one of: {", ".join(POLICY_NAMES)}.')
