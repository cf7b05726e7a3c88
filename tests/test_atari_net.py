"""Tests of the atari_net package: network layout, checkpoint format, games, policy."""
from __future__ import annotations

import argparse
import gzip
import io
import os
import re
import shutil
import sys
import types

import ale_py
import cv2
import gymnasium
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from atari_net import (AtariNet, AtariNetPolicy, ale_game, ale_game_name, find_checkpoints,
                       load_atari_net, save_atari_net)

torch.set_num_threads(1)
gymnasium.register_envs(ale_py)

PUBLISHED_KEYS = [
    '_AtariNet__features.0.weight', '_AtariNet__features.0.bias',
    '_AtariNet__features.2.weight', '_AtariNet__features.2.bias',
    '_AtariNet__features.4.weight', '_AtariNet__features.4.bias',
    '_AtariNet__head.0.weight', '_AtariNet__head.0.bias',
    '_AtariNet__head.2.weight', '_AtariNet__head.2.bias',
]


def _write_gz(path, payload):
    """A file in the published layout: a gzip stream of a torch.save payload."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(gzip.compress(buffer.getvalue()))
    return path


def _net(n_actions, seed=0):
    torch.manual_seed(seed)
    return AtariNet(n_actions)


def _random_frames(batch=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 4, 84, 84), dtype=torch.uint8, generator=gen)


# --- network ---------------------------------------------------------------------------------

def test_state_dict_has_the_published_keys_and_shapes():
    shapes = {key: tuple(value.shape) for key, value in AtariNet(6).state_dict().items()}
    assert list(shapes) == PUBLISHED_KEYS
    assert shapes['_AtariNet__features.0.weight'] == (32, 4, 8, 8)
    assert shapes['_AtariNet__features.2.weight'] == (64, 32, 4, 4)
    assert shapes['_AtariNet__features.4.weight'] == (64, 64, 3, 3)
    assert shapes['_AtariNet__head.0.weight'] == (512, 64 * 7 * 7)
    assert shapes['_AtariNet__head.2.weight'] == (6, 512)


def _nature_dqn_by_hand(state_dict, frames):
    """Q-values of a published-layout state dict for (B, 4, 84, 84) uint8 frames, with plain torch ops."""
    w = {key.removeprefix('_AtariNet__'): value for key, value in state_dict.items()}
    x = frames.float() / 255
    x = F.relu(F.conv2d(x, w['features.0.weight'], w['features.0.bias'], stride=4))
    x = F.relu(F.conv2d(x, w['features.2.weight'], w['features.2.bias'], stride=2))
    x = F.relu(F.conv2d(x, w['features.4.weight'], w['features.4.bias'], stride=1))
    x = F.relu(F.linear(x.flatten(1), w['head.0.weight'], w['head.0.bias']))
    return F.linear(x, w['head.2.weight'], w['head.2.bias'])


def test_forward_matches_the_nature_dqn_computation():
    net = _net(4)
    frames = _random_frames()
    expected = _nature_dqn_by_hand(net.state_dict(), frames)
    with torch.no_grad():
        q = net(frames)
    assert q.shape == (3, 4)
    torch.testing.assert_close(q, expected)


def test_forward_refuses_other_inputs():
    net = AtariNet(4)
    with pytest.raises(ValueError, match=r'uint8 frames of shape \(B, 4, 84, 84\)'):
        net(_random_frames().float())
    with pytest.raises(ValueError, match=r'got torch.uint8 \(3, 4, 64, 64\)'):
        net(torch.zeros(3, 4, 64, 64, dtype=torch.uint8))


# --- checkpoint format ------------------------------------------------------------------------

def test_save_writes_the_published_format_atomically(tmp_path):
    net = _net(6)
    path = save_atari_net(net, tmp_path / 'Pong' / '0', 1_250_000)
    assert path == tmp_path / 'Pong' / '0' / 'model_01250000.gz'
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    payload = torch.load(io.BytesIO(gzip.decompress(path.read_bytes())), weights_only=True)
    assert list(payload['estimator_state']) == PUBLISHED_KEYS


@pytest.mark.parametrize('key_style', ['published', 'plain', 'module.published', 'module.plain'])
def test_round_trip_gives_identical_outputs(tmp_path, key_style):
    net = _net(6).eval()
    state = net.state_dict()
    if key_style == 'published':
        path = save_atari_net(net, tmp_path, 42)
    else:
        if key_style.endswith('plain'):
            state = {key.removeprefix('_AtariNet__'): value for key, value in state.items()}
        if key_style.startswith('module.'):
            state = {f'module.{key}': value for key, value in state.items()}
        path = _write_gz(tmp_path / 'model_00000042.gz', {'estimator_state': state, 'step': 42})
    loaded = load_atari_net(path, 6)
    assert not loaded.training
    frames = _random_frames()
    with torch.no_grad():
        assert torch.equal(loaded(frames), net(frames))


_CALLS = []


def _record_call(*args):
    _CALLS.append(args)


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return _record_call, ('unpickled',)


def test_other_objects_load_as_placeholders_without_running_code(tmp_path, monkeypatch):
    net = _net(4).eval()
    # A config object of a training-code module that is absent when the file is loaded.
    training_code = types.ModuleType('atari_agents_training')

    class Config:
        pass

    Config.__module__, Config.__qualname__ = training_code.__name__, 'Config'
    training_code.Config = Config
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, training_code.__name__, training_code)
        path = _write_gz(tmp_path / 'model_00000001.gz', {
            'estimator_state': net.state_dict(), 'config': Config(), 'step': np.int64(7),
            'args': argparse.Namespace(game='Breakout'), 'hook': _RunsCodeWhenUnpickled()})
    assert training_code.__name__ not in sys.modules
    loaded = load_atari_net(path, 4)
    assert _CALLS == []
    frames = _random_frames()
    with torch.no_grad():
        assert torch.equal(loaded(frames), net(frames))


def test_the_legacy_torch_save_format_loads(tmp_path):
    net = _net(4).eval()
    buffer = io.BytesIO()
    torch.save({'estimator_state': net.state_dict()}, buffer, _use_new_zipfile_serialization=False)
    path = tmp_path / 'model_00000001.gz'
    path.write_bytes(gzip.compress(buffer.getvalue()))
    frames = _random_frames()
    with torch.no_grad():
        assert torch.equal(load_atari_net(path, 4)(frames), net(frames))


def test_a_blocked_global_is_refused(tmp_path):
    path = _write_gz(tmp_path / 'model_00000001.gz',
                     {'estimator_state': AtariNet(4).state_dict(), 'hook': os.system})
    blocked = f'{os.system.__module__}.system'  # posix.system on Linux
    with pytest.raises(ValueError, match=f'{re.escape(str(path))} does not hold a readable '
                                         f'torch.save stream: .*GLOBAL {blocked}'):
        load_atari_net(path, 4)


def test_a_file_that_is_not_gzip_is_refused(tmp_path):
    path = tmp_path / 'model_00000001.gz'
    buffer = io.BytesIO()
    torch.save({'estimator_state': AtariNet(6).state_dict()}, buffer)
    path.write_bytes(buffer.getvalue())  # torch.save output without the gzip layer
    with pytest.raises(ValueError, match=f'Checkpoint {re.escape(str(path))} is not a gzip file'):
        load_atari_net(path, 6)


def test_a_truncated_file_is_refused(tmp_path):
    good = save_atari_net(AtariNet(6), tmp_path, 1)
    path = tmp_path / 'model_00000002.gz'
    path.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ValueError, match=f'{re.escape(str(path))} is a truncated or corrupt gzip'):
        load_atari_net(path, 6)


def test_a_gzip_file_without_torch_data_is_refused(tmp_path):
    path = tmp_path / 'model_00000001.gz'
    path.write_bytes(gzip.compress(b'not a torch file'))
    with pytest.raises(ValueError, match=f'{re.escape(str(path))} does not hold a readable'):
        load_atari_net(path, 6)


def test_a_missing_estimator_state_is_refused(tmp_path):
    path = _write_gz(tmp_path / 'model_00000001.gz', {'model': AtariNet(6).state_dict()})
    with pytest.raises(ValueError, match=f"{re.escape(str(path))} has no 'estimator_state' entry"
                                         r".*found keys \['model'\]"):
        load_atari_net(path, 6)


def test_wrong_n_actions_names_both_counts(tmp_path):
    path = save_atari_net(AtariNet(6), tmp_path, 1)
    with pytest.raises(ValueError, match=f'{re.escape(str(path))} has 6 Q-value outputs, '
                                         f'expected n_actions=4'):
        load_atari_net(path, 4)


def test_wrong_layer_shape_names_both_shapes(tmp_path):
    state = AtariNet(6).state_dict()
    state['_AtariNet__features.0.weight'] = torch.zeros(32, 1, 8, 8)  # one frame, not a stack
    path = _write_gz(tmp_path / 'model_00000001.gz', {'estimator_state': state})
    with pytest.raises(ValueError, match=r'_AtariNet__features.0.weight has shape \(32, 1, 8, 8\), '
                                         r'expected \(32, 4, 8, 8\)'):
        load_atari_net(path, 6)


def test_unknown_keys_and_distributional_checkpoints_are_refused(tmp_path):
    state = AtariNet(6).state_dict()
    state['_AtariNet__head.3.weight'] = torch.zeros(1)
    path = _write_gz(tmp_path / 'model_00000001.gz', {'estimator_state': state})
    with pytest.raises(ValueError, match=r"unexpected keys \['_AtariNet__head.3.weight'\]"):
        load_atari_net(path, 6)
    state = AtariNet(6 * 51).state_dict()
    state['_AtariNet__support'] = torch.linspace(-10, 10, 51)
    path = _write_gz(tmp_path / 'model_00000002.gz', {'estimator_state': state})
    with pytest.raises(ValueError, match=r'distributional \(C51\)'):
        load_atari_net(path, 6)


# --- games and actions -------------------------------------------------------------------------

@pytest.mark.parametrize('env_id, name', [
    ('Atari-Space_Invaders', 'SpaceInvaders'), ('AtariGray-Pong', 'Pong'), ('Atari-Pong', 'Pong'),
    ('AirRaid', 'AirRaid'), ('air_raid', 'AirRaid'), ('Atari-Ms_Pacman', 'MsPacman'),
])
def test_ale_game_name(env_id, name):
    assert ale_game_name(env_id) == name


def test_an_unknown_game_is_refused_with_suggestions():
    with pytest.raises(ValueError, match="Unknown Atari game 'Atari-Space_Invader'.*SpaceInvaders"):
        ale_game_name('Atari-Space_Invader')


@pytest.mark.parametrize('game, minimal', [
    ('Pong', [0, 1, 3, 4, 11, 12]),
    ('Breakout', [0, 1, 3, 4]),
    ('SpaceInvaders', [0, 1, 3, 4, 11, 12]),
    ('AirRaid', [0, 1, 3, 4, 11, 12]),
    ('Skiing', [0, 3, 4]),
])
def test_minimal_actions_map_to_the_full_action_space(game, minimal):
    info = ale_game(game)
    assert list(info.minimal_actions) == minimal
    minimal_env = gymnasium.make(f'ALE/{game}-v5')
    full_env = gymnasium.make(f'ALE/{game}-v5', full_action_space=True)
    try:
        expected = [a.value for a in minimal_env.unwrapped.ale.getMinimalActionSet()]
        assert list(info.minimal_actions) == expected
        # The meaning of each mapped full-space action equals the minimal action's meaning.
        full_meanings = full_env.unwrapped.get_action_meanings()
        assert [full_meanings[i] for i in info.env_actions] == \
            minimal_env.unwrapped.get_action_meanings()
        assert info.screen_shape == minimal_env.observation_space.shape[:2]
    finally:
        minimal_env.close()
        full_env.close()
    if game == 'Skiing':
        # Skiing's "full" action space has 9 actions (no FIRE), so the indices shift.
        assert list(info.env_actions) == [0, 2, 3]
    else:
        assert list(info.env_actions) == minimal


def test_native_screen_sizes_differ_between_games():
    assert ale_game('Pong').screen_shape == (210, 160)
    assert ale_game('AirRaid').screen_shape == (250, 160)


# --- policy -------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def pong_dir(tmp_path_factory):
    """Three Pong checkpoints in two seed folders; tests must not change it."""
    folder = tmp_path_factory.mktemp('DQN_modern') / 'Pong'
    for seed, step in [(0, 1_000_000), (1, 25_000_000), (2, 50_000_000)]:
        save_atari_net(_net(6, seed), folder / str(seed % 2), step)
    return folder


def _obs(frame, reset):
    return {'screen_gray': frame, 'reset': reset}


def _record_network_inputs(monkeypatch):
    inputs = []
    forward = AtariNet.forward

    def recording_forward(self, frames):
        inputs.append(frames.clone())
        return forward(self, frames)

    monkeypatch.setattr(AtariNet, 'forward', recording_forward)
    return inputs


@pytest.mark.parametrize('make_folder', [False, True])
def test_a_missing_or_empty_folder_explains_where_checkpoints_come_from(tmp_path, make_folder):
    folder = tmp_path / 'DQN_modern' / 'Pong'
    if make_folder:
        folder.mkdir(parents=True)
        (folder / 'model_1.gz').write_bytes(b'')  # not model_<step:08d>.gz
    with pytest.raises(FileNotFoundError) as error:
        AtariNetPolicy(folder, 'Pong')
    message = str(error.value)
    assert str(folder) in message and 'model_<step:08d>.gz' in message
    assert 'floringogianu/atari-agents' in message and 'by hand' in message


def test_checkpoints_are_found_in_seed_subfolders(pong_dir):
    assert [p.relative_to(pong_dir).as_posix() for p in find_checkpoints(pong_dir)] == [
        '0/model_01000000.gz', '0/model_50000000.gz', '1/model_25000000.gz']


def test_a_bad_checkpoint_fails_at_construction(pong_dir, tmp_path):
    folder = shutil.copytree(pong_dir, tmp_path / 'Pong')
    save_atari_net(AtariNet(4), folder / '1', 30_000_000)  # a Breakout-sized network
    with pytest.raises(ValueError, match='model_30000000.gz has 4 Q-value outputs'):
        AtariNetPolicy(folder, 'Pong')


def test_frames_are_area_resized_and_stacked(pong_dir, monkeypatch):
    inputs = _record_network_inputs(monkeypatch)
    policy = AtariNetPolicy(pong_dir, 'Atari-Pong')
    # Quadrants split at row 105 and column 80 land exactly on 84×84 pixel 42 after resizing.
    quadrants = np.zeros((210, 160), np.uint8)
    quadrants[:105, 80:] = 200
    quadrants[105:, :80] = 100
    policy(_obs(quadrants, reset=True))
    expected = np.zeros((84, 84), np.uint8)
    expected[:42, 42:] = 200
    expected[42:, :42] = 100
    assert inputs[-1].shape == (1, 4, 84, 84)
    assert np.array_equal(inputs[-1][0, 3].numpy(), expected)
    assert not inputs[-1][0, :3].any()  # the rest of the stack is empty at episode start

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (210, 160), dtype=np.uint8) for _ in range(5)]
    for frame in frames:
        policy(_obs(frame, reset=False))
    area = [cv2.resize(f, (84, 84), interpolation=cv2.INTER_AREA) for f in frames]
    assert np.array_equal(inputs[-1][0].numpy(), np.stack(area[-4:]))  # oldest first
    linear = cv2.resize(frames[-1], (84, 84), interpolation=cv2.INTER_LINEAR)
    assert not np.array_equal(linear, area[-1])  # the check above can tell the two apart

    policy(_obs(frames[0], reset=True))
    assert not inputs[-1][0, :3].any()
    assert np.array_equal(inputs[-1][0, 3].numpy(), area[0])


def test_frames_of_the_wrong_shape_are_refused(pong_dir):
    policy = AtariNetPolicy(pong_dir, 'Pong')
    with pytest.raises(ValueError, match=r'uint8 of shape \(210, 160\), got uint8 \(64, 64, 3\)'):
        policy(_obs(np.zeros((64, 64, 3), np.uint8), reset=True))


def test_greedy_actions_follow_the_loaded_network(pong_dir, monkeypatch):
    inputs = _record_network_inputs(monkeypatch)
    policy = AtariNetPolicy(pong_dir, 'Pong', epsilon=0.0, seed=3)
    rng = np.random.default_rng(1)
    for t in range(6):
        frame = rng.integers(0, 256, (210, 160), dtype=np.uint8)
        action, metrics = policy(_obs(frame, reset=t == 0))
        path = policy.checkpoints[metrics['policy_checkpoint']]
        with torch.no_grad():
            q = load_atari_net(path, 6)(inputs[-1])[0]
        assert action == ale_game('Pong').env_actions[int(q.argmax())]
        assert metrics['policy_value'] == pytest.approx(float(q.max()))
        assert metrics['policy_checkpoint_step'] == int(path.name[6:14])


def test_a_checkpoint_is_drawn_per_episode(pong_dir):
    frame = np.zeros((210, 160), np.uint8)
    draws = []
    for _ in range(2):
        policy = AtariNetPolicy(pong_dir, 'Pong', seed=7)
        drawn = []
        for episode in range(30):
            within = {policy(_obs(frame, reset=t == 0))[1]['policy_checkpoint'] for t in range(3)}
            assert len(within) == 1  # no switch inside an episode
            drawn.append(within.pop())
        draws.append(drawn)
    assert draws[0] == draws[1]  # seeded
    assert set(draws[0]) == {0, 1, 2}


def test_random_actions_cover_the_minimal_set_in_full_indices(pong_dir):
    policy = AtariNetPolicy(pong_dir, 'Pong', epsilon=1.0)
    frame = np.zeros((210, 160), np.uint8)
    actions = {policy(_obs(frame, reset=t == 0))[0] for t in range(200)}
    assert actions == {0, 1, 3, 4, 11, 12}


def test_plays_real_pong_with_max_pooled_native_frames(pong_dir):
    env = gymnasium.make('ALE/Pong-v5', frameskip=1, repeat_action_probability=0.25,
                         full_action_space=True)
    # screen_size is cv2's (width, height): (160, 210) keeps the native frame.
    env = gymnasium.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4,
                                                screen_size=(160, 210), grayscale_obs=True)
    assert env.observation_space.shape == (210, 160)
    assert env.action_space.n == 18
    policy = AtariNetPolicy(pong_dir, 'Pong', epsilon=0.0, seed=0)  # draws checkpoints 2, then 1
    # The expected actions come from the files' tensors and a frame stack kept here (area-resized,
    # cleared at each episode start), not from the policy's network or stack.
    weights = [torch.load(io.BytesIO(gzip.decompress(p.read_bytes())), weights_only=True)['estimator_state']
               for p in policy.checkpoints]
    env_actions = ale_game('Pong').env_actions
    try:
        frame, _ = env.reset(seed=0)
        reset, values, drawn = True, [], set()
        for t in range(250):
            if reset:
                stack = np.zeros((4, 84, 84), np.uint8)
            stack = np.concatenate([stack[1:], cv2.resize(frame, (84, 84), interpolation=cv2.INTER_AREA)[None]])
            action, metrics = policy(_obs(frame, reset))
            q = _nature_dqn_by_hand(weights[metrics['policy_checkpoint']], torch.from_numpy(stack)[None])[0]
            assert action == env_actions[int(q.argmax())], t
            assert metrics['policy_value'] == pytest.approx(float(q.max()), rel=1e-5), t
            values.append(metrics['policy_value'])
            drawn.add(metrics['policy_checkpoint'])
            frame, _, terminated, truncated, _ = env.step(action)
            reset = terminated or truncated or t == 120  # also start a fresh episode midway
            if reset:
                frame, _ = env.reset()
    finally:
        env.close()
    # Both episodes' checkpoints were used, and the values follow the frames. (These random networks
    # pick one action everywhere in these episodes, so the actions alone would show little.)
    assert drawn == {1, 2} and len(set(values)) > 10
