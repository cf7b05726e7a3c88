"""The multi-environment dataset stage, on the real config sections, with dqn and atari_net policies."""
import numpy as np
import pytest
import torch
import yaml

import launch_generator_multi_env
from atari_net import AtariNet, ale_game, save_atari_net
from dqn.networks import ConvQNetwork
from pydreamer import tracking
from pydreamer.artifacts import ArtifactFolder
from pydreamer.envs import make_env
from pydreamer.episodes import load_episode

MINATAR_GAMES = ['MinAtar/Breakout-v0', 'MinAtar/Asterix-v0', 'MinAtar/SpaceInvaders-v0']


def _runs():
    c = tracking.client()
    return c.search_runs([e.experiment_id for e in c.search_experiments()], order_by=['attributes.start_time ASC'])


def _episodes(run_id, tmp_path):
    out = []
    for folder in ('episodes', 'episodes_eval'):
        for sub in ArtifactFolder(run_id, folder).list_subfolders():
            for path, name in ArtifactFolder(run_id, sub).list():
                out.append((name, load_episode(ArtifactFolder(run_id, sub).download(path, str(tmp_path / sub)))))
    return out


@pytest.fixture
def dqn_dirs(tmp_path):
    torch.manual_seed(0)
    dirs = {}
    for env_id in MINATAR_GAMES:
        channels = make_env(env_id).reset()['minatar_state'].shape[-1]
        folder = tmp_path / 'dqn' / env_id.split('/')[1]
        folder.mkdir(parents=True)
        for step in (1000, 2000):
            torch.save(ConvQNetwork(channels, 6).state_dict(), folder / f'model_{step}.pt')
        dirs[env_id] = str(folder)
    return dirs


def _minatar_args(dqn_dirs, n_env_steps):
    return ['--configs', 'defaults', 'minatar', 'debug', 'generator_multi_env',
            '--env_id', yaml.safe_dump(MINATAR_GAMES, default_flow_style=True).strip(),
            '--dqn_dir', yaml.safe_dump(dqn_dirs, default_flow_style=True).strip(),
            '--generator_prefill_steps', '300', '--n_env_steps', str(n_env_steps), '--split_fraction', '0.1']


def test_minatar_multi_env_dataset_with_dqn_policy(mlflow_local, tmp_path, dqn_dirs):
    assert launch_generator_multi_env.main(_minatar_args(dqn_dirs, 3000)) == 0
    run = _runs()[0]
    assert run.data.tags['stage'] == 'generator_multi_env'
    episodes = _episodes(run.info.run_id, tmp_path)
    env_ids = np.concatenate([data['env_id'] for _, data in episodes])
    counts = np.bincount(env_ids, minlength=len(MINATAR_GAMES))
    assert counts.sum() == 3000
    assert counts.min() > 0.2 * counts.sum(), counts      # the game with the fewest steps is played next
    mixed = [data for _, data in episodes if len(set(data['env_id'])) > 1]
    assert mixed, 'files hold consecutive episodes of different games'
    for key in ('agent/return', 'agent/Breakout-v0/return', 'agent/Asterix-v0/return',
                'agent/SpaceInvaders-v0/return', 'agent/policy_dqn', 'agent/policy_random'):
        assert key in run.data.metrics, key

    # Resuming the same run continues the episode numbering up to the new n_env_steps.
    before = {name for name, _ in episodes}
    args = _minatar_args(dqn_dirs, 4500) + ['--resume_id', run.info.run_id]
    assert launch_generator_multi_env.main(args) == 0
    after = _episodes(run.info.run_id, tmp_path / 'again')
    new = [name for name, _ in after if name not in before]
    assert sum(name.steps for name, _ in after) == 4500
    assert min(n.ep_from for n in new) > max(n.ep_to for n in before)


def test_missing_dqn_folder_is_a_clear_error(mlflow_local, tmp_path, dqn_dirs):
    dqn_dirs['MinAtar/Asterix-v0'] = str(tmp_path / 'nowhere')
    with pytest.raises(Exception, match=r'nowhere.*dqn/train_agents.py'):
        launch_generator_multi_env.main(_minatar_args(dqn_dirs, 1000))
    assert not _runs()


def test_atari_multi_env_dataset_with_atari_net_policy(mlflow_local, tmp_path):
    games = {'Atari-Pong': 'Pong', 'Atari-Breakout': 'Breakout'}
    dirs = {}
    for env_id, game in games.items():
        folder = tmp_path / 'atari_net' / game
        save_atari_net(AtariNet(len(ale_game(game).minimal_actions)), folder, 1_000_000)
        dirs[env_id] = str(folder)
    args = ['--configs', 'defaults', 'atari', 'debug', 'generator_multi_env_atari',
            '--env_id', '[Atari-Pong, Atari-Breakout]',
            '--atari_net_dir', yaml.safe_dump(dirs, default_flow_style=True).strip(),
            '--generator_prefill_steps', '100', '--n_env_steps', '600', '--env_time_limit', '150']
    assert launch_generator_multi_env.main(args) == 0
    run = _runs()[0]
    episodes = _episodes(run.info.run_id, tmp_path)
    images = np.concatenate([data['image'] for _, data in episodes])
    assert images.shape == (600, 64, 64, 3) and images.dtype == np.uint8
    assert set(np.concatenate([data['env_id'] for _, data in episodes])) == {0, 1}
    assert 'agent/policy_atari_net' in run.data.metrics
