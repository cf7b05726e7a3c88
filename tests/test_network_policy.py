"""The network policy of the generators (pydreamer.network_policy) against a real run on the local
mlflow store: it feeds the model each observation with the action that led to it, as the learner
reads the stored rows, and it reloads newer checkpoints, keeping its weights when one is unreadable."""
from __future__ import annotations

import logging

import numpy as np
import torch

from pydreamer import tracking
from pydreamer.checkpoint import RunCheckpoints, save_checkpoint
from pydreamer.config import build_config
from pydreamer.envs import make_env
from pydreamer.episodes import EpisodeChunker, load_episode, save_episode
from pydreamer.generator import _play_episode
from pydreamer.models.dreamer import Dreamer
from pydreamer.network_policy import NetworkPolicy
from pydreamer.preprocess import preprocess
from pydreamer.train_step import init_optimizers

DEBUG = ['defaults', 'minatar', 'debug']


def publish(run_id, conf, step, tmp_path, seed=None, edit=None) -> dict:
    """Save a checkpoint of a fresh model (initialised from `seed`, default `step`) as the run's
    checkpoints/latest.pt; `edit` may change the saved payload first. Returns the model's state."""
    torch.manual_seed(step if seed is None else seed)
    model = Dreamer(conf)
    path = tmp_path / f'checkpoint-{step}' / 'latest.pt'
    save_checkpoint(path, step, model, init_optimizers(model, conf), conf.to_dict())
    if edit is not None:
        payload = torch.load(path, weights_only=True)
        edit(payload)
        torch.save(payload, path)
    RunCheckpoints(run_id).upload(path)
    return model.state_dict()


def same_weights(model, state) -> bool:
    own = model.state_dict()
    return own.keys() == state.keys() and all(torch.equal(own[k], state[k]) for k in own)


def reset_obs():
    return {'image': np.zeros((10, 10), np.uint8), 'reset': True}


def test_network_policy_feeds_the_model_each_row_as_the_learner_reads_it(mlflow_local, tmp_path):
    """Two episodes played by the network policy through the generator's episode loop: at every
    row t where the policy acted, the model got image[t], action[t] (the action that led to it,
    zeros on a reset row) and reset[t] exactly as preprocessing the stored file gives them to the
    learner, and the action it chose is the one stored on row t + 1."""
    conf = build_config(DEBUG)
    run_id = tracking.start_run(conf, 'test')
    publish(run_id, conf, 10, tmp_path)
    policy = NetworkPolicy(conf, run_id, conf.action_dim, seed=0, reload_seconds=3600)
    assert policy.wait_for_checkpoint()
    seen = []
    model_policy = policy.model.policy

    def recording_policy(obs, state, greedy=False):
        action, state, metrics = model_policy(obs, state, greedy)
        seen.append(({k: v.clone() for k, v in obs.items()}, action.clone()))
        return action, state, metrics

    policy.model.policy = recording_policy
    env = make_env('MinAtar/Breakout-v0', seed=3)
    chunker = EpisodeChunker(10 ** 6)
    for episode in range(2):
        _play_episode(env, policy, 0, episode, chunker, 10 ** 6, with_env_id=False)
    [(name, data)] = chunker.flush()
    save_episode(tmp_path / name.name, data)
    stored = load_episode(tmp_path / name.name)
    learner = preprocess({k: v[:, np.newaxis] for k, v in stored.items()}, conf)     # (T, 1, ...)
    T = len(stored['reset'])
    acted = [t for t in range(T - 1) if not stored['reset'][t + 1]]  # the last row of an episode gets no action
    assert len(seen) == len(acted) and stored['reset'].sum() == 2 and T > 20
    for (obs, action), t in zip(seen, acted):
        for key in ('image', 'action', 'reset'):
            assert torch.equal(obs[key], learner[key][t:t + 1]), (key, t)
        assert torch.equal(action[0], learner['action'][t + 1, 0]), t
    env.close()


def test_network_policy_reloads_newer_checkpoints_and_keeps_its_weights_when_one_is_unreadable(
        mlflow_local, tmp_path, caplog):
    conf = build_config(DEBUG)
    run_id = tracking.start_run(conf, 'test')
    policy = NetworkPolicy(conf, run_id, conf.action_dim, seed=0, reload_seconds=0)  # check at every reset
    first = publish(run_id, conf, 1, tmp_path)
    policy(reset_obs())
    assert policy.loaded_step == 1 and same_weights(policy.model, first)
    second = publish(run_id, conf, 2, tmp_path)
    policy(reset_obs())
    assert policy.loaded_step == 2 and same_weights(policy.model, second)

    def drop_tensor(payload):
        del payload['model']['wm.rssm.post_out.bias']

    def wrong_shape(payload):
        payload['model']['ac.actor.model.0.weight'] = torch.zeros(3, 3)

    truncated = tmp_path / 'truncated' / 'latest.pt'
    truncated.parent.mkdir()
    truncated.write_bytes((tmp_path / 'checkpoint-2' / 'latest.pt').read_bytes()[:5000])
    broken = {'truncated': lambda: RunCheckpoints(run_id).upload(truncated),
              'missing tensor': lambda: publish(run_id, conf, 3, tmp_path, edit=drop_tensor),
              'wrong shape': lambda: publish(run_id, conf, 4, tmp_path, edit=wrong_shape)}
    for what, upload in broken.items():
        upload()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger='pydreamer.network_policy'):
            policy(reset_obs())
        assert policy.loaded_step == 2 and same_weights(policy.model, second), what
        assert 'keeping the current policy' in caplog.text, what

    later = publish(run_id, conf, 5, tmp_path)
    policy(reset_obs())
    assert policy.loaded_step == 5 and same_weights(policy.model, later)
    slow = NetworkPolicy(conf, run_id, conf.action_dim, seed=0, reload_seconds=3600)
    slow(reset_obs())                                    # the first episode loads what is there
    publish(run_id, conf, 6, tmp_path)
    slow(reset_obs())
    assert slow.loaded_step == 5 and same_weights(slow.model, later)
