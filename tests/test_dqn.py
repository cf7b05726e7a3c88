"""Tests of the dqn package with real torch and MinAtar: networks, checkpoint loading, policy, training."""
import csv
import filecmp
import io
import logging
import os
import subprocess
import sys

import minatar
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dqn.networks import CheckpointError, ConvQNetwork, MLPQNetwork, checkpoint_shape, load_q_network
from dqn.policy import DQNPolicy
from dqn.train_agents import (PROJECT_ROOT, ReplayBuffer, TrainConfig, game_module, make_optimizer, main,
                              td_loss, td_target, train)
from pydreamer import tracking
from pydreamer.checkpoint import CheckpointError as RunCheckpointError
from pydreamer.config import build_config
from pydreamer.launching.cli import run_cli
from pydreamer.policies import make_policy

torch.set_num_threads(1)

BREAKOUT_CHANNELS = 4
SEAQUEST_CHANNELS = 10


class OriginalMLP(nn.Module):
    """The original project's agent as its own code defined it: three Linear layers named layer1..3."""

    def __init__(self, n_observations, n_actions):
        super().__init__()
        self.layer1 = nn.Linear(n_observations, 128)
        self.layer2 = nn.Linear(128, 128)
        self.layer3 = nn.Linear(128, n_actions)

    def forward(self, x):
        return self.layer3(torch.relu(self.layer2(torch.relu(self.layer1(x)))))


def mlp_q_by_hand(w, states):
    """Q-values of an original-project state dict with plain torch ops: HWC-flattened floats, 3 Linear layers."""
    x = torch.from_numpy(states).float().reshape(len(states), -1)
    x = torch.relu(x @ w['layer1.weight'].T + w['layer1.bias'])
    x = torch.relu(x @ w['layer2.weight'].T + w['layer2.bias'])
    return x @ w['layer3.weight'].T + w['layer3.bias']


def conv_q_by_hand(w, states):
    """Q-values of a MinAtar reference DQN state dict with plain torch ops (channels first for conv2d)."""
    x = torch.from_numpy(states).float().permute(0, 3, 1, 2)
    x = F.relu(F.conv2d(x, w['conv.weight'], w['conv.bias']))
    x = F.relu(x.flatten(1) @ w['fc_hidden.weight'].T + w['fc_hidden.bias'])
    return x @ w['output.weight'].T + w['output.bias']


def minatar_states(game, n, seed=0):
    env = minatar.Environment(game)
    env.seed(seed)
    env.reset()
    rng = np.random.default_rng(seed)
    states = []
    for _ in range(n):
        states.append(env.state())
        _, terminal = env.act(int(rng.integers(6)))
        if terminal:
            env.reset()
    return np.stack(states)  # (n, 10, 10, C) bool


@pytest.fixture
def original_mlp_folder(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / 'breakout'
    folder.mkdir()
    models = {}
    for n in (100, 2000):
        model = OriginalMLP(10 * 10 * BREAKOUT_CHANNELS, 6)
        torch.save(model.state_dict(), folder / f'model_{n}.pt')
        models[n] = model
    return folder, models


def test_original_mlp_checkpoint_loads_unchanged_and_gives_the_same_q_values(original_mlp_folder):
    folder, models = original_mlp_folder
    net = load_q_network(folder / 'model_2000.pt', BREAKOUT_CHANNELS, 6)
    assert isinstance(net, MLPQNetwork)
    states = minatar_states('breakout', 20)
    # The original agents read the raw observation flattened in HWC order as floats.
    expected = models[2000](torch.from_numpy(states).float().reshape(20, -1))
    torch.testing.assert_close(net(torch.from_numpy(states)), expected)


def test_conv_and_mlp_state_dicts_are_told_apart_by_their_keys():
    conv = ConvQNetwork(SEAQUEST_CHANNELS, 6).state_dict()
    mlp = OriginalMLP(10 * 10 * SEAQUEST_CHANNELS, 6).state_dict()
    assert checkpoint_shape(conv) == ('conv', SEAQUEST_CHANNELS, 6)
    assert checkpoint_shape(mlp) == ('mlp', SEAQUEST_CHANNELS, 6)


def test_conv_network_matches_minatar_reference_shapes():
    net = ConvQNetwork(BREAKOUT_CHANNELS, 6)
    assert net.conv.weight.shape == (16, BREAKOUT_CHANNELS, 3, 3)
    assert net.fc_hidden.weight.shape == (128, 16 * 8 * 8)
    assert net(torch.zeros(5, 10, 10, BREAKOUT_CHANNELS, dtype=torch.bool)).shape == (5, 6)


def test_checkpoint_for_another_game_names_both_channel_counts(tmp_path):
    path = tmp_path / 'model_1.pt'
    torch.save(ConvQNetwork(SEAQUEST_CHANNELS, 6).state_dict(), path)
    with pytest.raises(CheckpointError, match=rf'{path}.*takes 10 observation channels, but the game has 4'):
        load_q_network(path, BREAKOUT_CHANNELS, 6)
    with pytest.raises(CheckpointError, match='outputs 6 actions, but the game has 18'):
        load_q_network(path, SEAQUEST_CHANNELS, 18)


def test_unknown_state_dict_names_the_file_and_the_keys_found(tmp_path):
    path = tmp_path / 'model_1.pt'
    torch.save(nn.Sequential(nn.Linear(400, 6)).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"model_1.pt is not a MinAtar DQN state dict: found keys \['0.bias', '0.weight'\]"):
        load_q_network(path, BREAKOUT_CHANNELS, 6)


def test_policy_plays_original_mlp_checkpoints_and_switches_only_at_episode_start(original_mlp_folder):
    folder, _ = original_mlp_folder
    policy = DQNPolicy(folder, n_actions=6, epsilon=0.0, seed=0)
    assert [p.name for p in policy.paths] == ['model_100.pt', 'model_2000.pt']
    states = minatar_states('breakout', 200)
    # ε = 0 is greedy with the drawn file's network, computed here from its tensors, not the policy's copy.
    greedy = {i: mlp_q_by_hand(torch.load(path, weights_only=True), states).argmax(1).tolist()
              for i, path in enumerate(policy.paths)}
    assert greedy[0] != greedy[1]  # the two files disagree, so a wrong draw shows
    chosen = []
    for t, state in enumerate(states):
        action, metrics = policy({'minatar_state': state, 'reset': t % 20 == 0})
        assert action == greedy[metrics['policy_checkpoint']][t], t
        chosen.append(metrics['policy_checkpoint'])
    episodes = np.array(chosen).reshape(10, 20)
    assert (episodes == episodes[:, :1]).all()  # one checkpoint for a whole episode
    assert set(episodes[:, 0]) == {0, 1}  # both skill levels are used


def test_policy_epsilon_one_is_uniform_over_the_six_actions(original_mlp_folder):
    folder, _ = original_mlp_folder
    policy = DQNPolicy(folder / 'model_100.pt', n_actions=6, epsilon=1.0, seed=1)
    state = minatar_states('breakout', 1)[0]
    counts = np.bincount([policy({'minatar_state': state, 'reset': False})[0] for _ in range(600)], minlength=6)
    assert counts.min() > 60


def test_policy_errors_name_the_folder_and_the_training_script(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf'{tmp_path / "missing"} does not exist; `python dqn/train_agents.py`'):
        DQNPolicy(tmp_path / 'missing')
    with pytest.raises(FileNotFoundError, match=rf'{tmp_path} holds no model_\*.pt files; `python dqn/train_agents.py`'):
        DQNPolicy(tmp_path)


def test_policy_rejects_an_observation_of_another_game(original_mlp_folder):
    folder, _ = original_mlp_folder
    policy = DQNPolicy(folder, seed=0)
    with pytest.raises(ValueError, match=r'shape \(10, 10, 10\), expected \(10, 10, 4\)'):
        policy({'minatar_state': minatar_states('seaquest', 1)[0], 'reset': True})


def test_game_names_in_every_minatar_spelling():
    assert game_module('space_invaders') == game_module('SpaceInvaders') == 'space_invaders'
    assert game_module('MinAtar/Breakout-v0') == 'breakout'
    with pytest.raises(ValueError, match="Unknown MinAtar game 'pong'"):
        game_module('pong')


def test_td_target_by_hand():
    next_q = torch.tensor([[1.0, 3.0], [2.0, -1.0]])
    target = td_target(torch.tensor([0.5, 1.0]), torch.tensor([0.0, 1.0]), next_q, gamma=0.9)
    torch.testing.assert_close(target, torch.tensor([0.5 + 0.9 * 3.0, 1.0]))


def test_td_updates_fit_a_fixed_batch():
    """The loss, its gradient and the optimizer learn: repeated updates on one batch drive the loss down."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    states = minatar_states('breakout', 33)
    replay = ReplayBuffer(32, states.shape[1:])
    for t in range(32):
        replay.add(states[t], int(rng.integers(6)), float(rng.integers(2)), states[t + 1], bool(t % 10 == 9))
    batch = replay.sample(32, rng)
    q_net = ConvQNetwork(BREAKOUT_CHANNELS, 6)
    target_net = ConvQNetwork(BREAKOUT_CHANNELS, 6)
    optimizer = make_optimizer(q_net, TrainConfig(lr=1e-3))
    losses = []
    for _ in range(300):
        loss = td_loss(q_net, target_net, batch, gamma=0.99)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]


def tiny_config(out, **changes):
    values = dict(games=('Breakout',), checkpoint_steps=(600, 1200), out=out, replay_start=300, replay_size=2000,
                  eps_decay_steps=500, target_update=100, eval_episodes=2, log_interval=600, threads=1)
    return TrainConfig(**{**values, **changes})


def test_training_writes_loadable_checkpoints_and_never_overwrites_them(tmp_path):
    paths = train(tiny_config(tmp_path))
    game_dir = tmp_path / 'breakout'
    assert paths == [game_dir / 'model_600.pt', game_dir / 'model_1200.pt']
    states = minatar_states('breakout', 20)
    for path in paths:
        net, saved = load_q_network(path, BREAKOUT_CHANNELS, 6), torch.load(path, weights_only=True)
        assert isinstance(net, ConvQNetwork)
        with torch.no_grad():
            torch.testing.assert_close(net(torch.from_numpy(states)), conv_q_by_hand(saved, states))
    assert sorted(p.name for p in game_dir.iterdir()) == ['model_1200.pt', 'model_600.pt', 'scores.csv']
    policy = DQNPolicy(game_dir, seed=0)
    assert policy({'minatar_state': minatar_states('breakout', 1)[0], 'reset': True})[0] in range(6)
    rows = (game_dir / 'scores.csv').read_text().splitlines()
    assert rows[0] == 'step,policy,eval_return,eval_std,episodes'
    assert [row.split(',')[:2] for row in rows[1:]] == [['0', 'random'], ['600', 'model_600.pt'],
                                                        ['1200', 'model_1200.pt']]

    def snapshot():
        return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in game_dir.iterdir()}

    before = snapshot()
    assert train(tiny_config(tmp_path)) == paths  # the final checkpoint exists: the game is skipped
    assert snapshot() == before

    # An interrupted run (final checkpoint missing) is trained again from scratch; the finished file stays as it was.
    paths[1].unlink()
    train(tiny_config(tmp_path))
    after = snapshot()
    assert after['model_600.pt'] == before['model_600.pt']  # also its mtime: not rewritten with equal bytes
    # Training is seeded, so a run from scratch writes the deleted file's weights again; one resumed
    # from model_600 would not.
    retrained = torch.load(paths[1], weights_only=True)
    deleted = torch.load(io.BytesIO(before['model_1200.pt'][1]), weights_only=True)
    assert retrained.keys() == deleted.keys() and all(torch.equal(retrained[k], deleted[k]) for k in deleted)


def test_main_trains_the_mlp_as_an_mlflow_run_whose_artifacts_dqn_dir_can_name(mlflow_local, tmp_path):
    assert main(['--games', 'freeway', '--checkpoint-steps', '400', '--replay-start', '200', '--replay-size', '1_000',
                 '--arch', 'mlp', '--eval-episodes', '1', '--out', str(tmp_path / 'agents'),
                 '--log-interval', '200', '--run-name', 'agents', '--run-tags', '{transfer: t, arm: dqn}']) == 0
    local = tmp_path / 'agents' / 'freeway'
    net = load_q_network(local / 'model_400.pt', 7, 6)
    assert isinstance(net, MLPQNetwork)
    c = tracking.client()
    [run] = c.search_runs([e.experiment_id for e in c.search_experiments()])
    run_id = run.info.run_id
    assert (run.info.status, run.info.run_name, run.data.tags['stage']) == ('FINISHED', 'agents', 'dqn')
    assert {k: run.data.tags[k] for k in ('transfer', 'arm', 'game', 'seed')} == \
        {'transfer': 't', 'arm': 'dqn', 'game': 'freeway', 'seed': '0'}
    assert run.data.params['arch'] == 'mlp' and run.data.params['checkpoint_steps'] == '(400,)'
    scores = {row['policy']: row for row in csv.DictReader(open(local / 'scores.csv'))}
    [evaluated] = c.get_metric_history(run_id, 'eval/freeway/return')
    assert (evaluated.step, evaluated.value) == (400, float(scores['model_400.pt']['eval_return']))
    assert run.data.metrics['eval/freeway/return_random'] == float(scores['random']['eval_return'])
    assert [m.step for m in c.get_metric_history(run_id, 'train/freeway/loss')] == [400]  # learning starts at 200
    artifacts = c.download_artifacts(run_id, 'freeway', str(tmp_path / 'dl'))
    assert sorted(os.listdir(artifacts)) == ['model_400.pt', 'scores.csv']
    assert all(filecmp.cmp(f'{artifacts}/{name}', local / name, shallow=False) for name in os.listdir(artifacts))

    conf = build_config(['defaults', 'minatar']).replace(dqn_dir={'MinAtar/Freeway-v0': f'runs:/{run_id}/freeway'})
    policy = make_policy('dqn', conf, '', 'MinAtar/Freeway-v0', 6, seed=0)
    loaded, saved = policy.networks[0].state_dict(), torch.load(local / 'model_400.pt', weights_only=True)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    conf = conf.replace(dqn_dir={'MinAtar/Freeway-v0': f'runs:/{run_id}/pong'})
    with pytest.raises(RunCheckpointError, match=f'Run {run_id} has no artifact pong'):
        make_policy('dqn', conf, '', 'MinAtar/Freeway-v0', 6, seed=0)


def test_a_bad_flag_is_one_sentence_and_starts_no_run(mlflow_local, capsys, monkeypatch):
    root = logging.getLogger()  # run_cli configures logging for a script's process
    monkeypatch.setattr(root, 'handlers', root.handlers[:])
    monkeypatch.setattr(root, 'level', root.level)
    assert run_cli(main, 'dqn', ['--games', 'pong']) == 2
    assert "error: Unknown MinAtar game 'pong'" in capsys.readouterr().err
    assert run_cli(main, 'dqn', ['--games', 'freeway', '--run-tags', 'arm=dqn']) == 2
    assert "error: --run-tags 'arm=dqn' is not a YAML map" in capsys.readouterr().err
    c = tracking.client()
    assert not c.search_runs([e.experiment_id for e in c.search_experiments()])


def test_script_runs_from_the_project_root():
    result = subprocess.run([sys.executable, 'dqn/train_agents.py', '--help'], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': ''})
    assert result.returncode == 0, result.stderr
    assert '--checkpoint-steps' in result.stdout
