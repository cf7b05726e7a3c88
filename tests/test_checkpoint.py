"""Checkpoints (pydreamer.checkpoint) and starting from another run's checkpoint
(pydreamer.pretrained): format checks, optimizer roles, which parts load, which parts stay frozen
through training, and resumed training that continues its optimizer state."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import train_finetune
import train_wm_only
from pydreamer import tracking
from pydreamer.artifacts import ArtifactFolder
from pydreamer.checkpoint import (
    FORMAT_VERSION, CheckpointError, RunCheckpoints, UnreadableCheckpoint, read_checkpoint, read_header, restore,
    save_checkpoint)
from pydreamer.config import build_config
from pydreamer.episodes import EpisodeFile, save_episode
from pydreamer.models.dreamer import Dreamer
from pydreamer.pretrained import load_pretrained
from pydreamer.train_step import init_optimizers

DEBUG = ['defaults', 'minatar', 'debug']


def config(**changes):
    return build_config(DEBUG).replace(**changes)


def saved_model(path, conf, seed=1, step=7, edit=None) -> dict:
    """Save a fresh model of `conf` (initialised from `seed`) at `path`; `edit` may change the payload
    before it is written. Returns the saved model state."""
    torch.manual_seed(seed)
    model = Dreamer(conf)
    save_checkpoint(path, step, model, init_optimizers(model, conf), conf.to_dict())
    if edit is not None:
        payload = torch.load(path, weights_only=True)
        edit(payload)
        torch.save(payload, path)
    return model.state_dict()


def part(state, prefix):
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_read_checkpoint_refuses_other_format_versions_and_foreign_files(tmp_path):
    path = tmp_path / 'latest.pt'
    saved_model(path, config(), edit=lambda payload: payload.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match=f'has format version {FORMAT_VERSION + 1}, but this code reads version {FORMAT_VERSION}'):
        read_checkpoint(path)
    torch.save({'model': {}}, tmp_path / 'state.pt')
    with pytest.raises(CheckpointError, match='is not a pydreamer checkpoint'):
        read_checkpoint(tmp_path / 'state.pt')
    saved_model(path, config())
    assert read_checkpoint(path)['format_version'] == FORMAT_VERSION


def test_the_header_of_a_checkpoint_reads_without_tensors_and_refuses_what_torch_would(tmp_path):
    path = tmp_path / 'latest.pt'
    saved_model(path, config(cnn_depth=6), step=11)
    header, full = read_header(path), read_checkpoint(path)
    assert header['step'] == full['step'] == 11 and header['config'] == full['config']
    assert header['config']['cnn_depth'] == 6 and header['format_version'] == FORMAT_VERSION
    assert header['model'].keys() == full['model'].keys() and all(v is None for v in header['model'].values())
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(UnreadableCheckpoint, match='latest.pt could not be read'):
        read_header(path)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # inside a tensor's bytes: only the archive's checksum tells
    path.write_bytes(bytes(flipped))
    with pytest.raises(UnreadableCheckpoint, match='checksum'):
        read_header(path)
    saved_model(path, config(), edit=lambda payload: payload.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(UnreadableCheckpoint, match=f'has format version {FORMAT_VERSION + 1}'):
        read_header(path)


def test_restore_names_a_missing_optimizer_role(tmp_path):
    path = tmp_path / 'latest.pt'
    saved_model(path, config(), edit=lambda payload: payload['optimizers'].pop('critic'))
    model = Dreamer(config())
    with pytest.raises(CheckpointError, match=r"no optimizer state for role\(s\) \['critic'\]; it holds \['actor', 'wm'\]"):
        restore(read_checkpoint(path), model, init_optimizers(model, config()))


def test_load_parts_all_loads_actor_and_critic_and_wm_only_the_world_model(tmp_path):
    path = tmp_path / 'latest.pt'
    saved = saved_model(path, config())
    for parts in ('all', 'wm'):
        torch.manual_seed(2)
        model = Dreamer(config())
        fresh = {k: v.clone() for k, v in model.state_dict().items()}
        summary = load_pretrained(config(model_checkpoint=str(path), load_parts=parts), model)
        state = model.state_dict()
        assert equal(part(state, 'wm.'), part(saved, 'wm.'))
        assert equal(part(state, 'ac.'), part(saved if parts == 'all' else fresh, 'ac.')), parts
        prefixes = ('wm.', 'ac.') if parts == 'all' else ('wm.',)
        loaded = sum(p.numel() for name, p in model.named_parameters() if name.startswith(prefixes))
        assert summary['parameters_loaded'] == f'{loaded:,}' and summary['pretrained_step'] == '7'


def test_load_parts_all_checks_the_actor_critic_architecture(tmp_path):
    path = tmp_path / 'latest.pt'
    saved = saved_model(path, config(actor_critic_layers=2))
    model = Dreamer(config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match='trained with actor_critic_layers=2 but this config has actor_critic_layers=4'):
        load_pretrained(config(model_checkpoint=str(path), load_parts='all'), model)
    assert equal(model.state_dict(), before)
    load_pretrained(config(model_checkpoint=str(path), load_parts='wm'), model)   # the world model alone fits
    assert equal(part(model.state_dict(), 'wm.'), part(saved, 'wm.'))


def test_a_checkpoint_lacking_a_tensor_of_the_parts_to_load_is_refused_before_loading(tmp_path):
    path = tmp_path / 'latest.pt'
    saved_model(path, config(), edit=lambda payload: payload['model'].pop('wm.rssm.prior_out.weight'))
    model = Dreamer(config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match='lacks 1 tensors of the parts to load, e.g. wm.rssm.prior_out.weight'):
        load_pretrained(config(model_checkpoint=str(path)), model)
    assert equal(model.state_dict(), before)


def _write_episodes(run_id, tmp_path, files=2, rows=60):
    """Random MinAtar-like episode files in the run's episodes/0 (enough rows for the debug batch)."""
    rng = np.random.default_rng(0)
    for i in range(files):
        action = np.eye(6, dtype=np.float32)[rng.integers(0, 6, rows)]
        action[0] = 0
        data = {'image': rng.integers(0, 5, (rows, 10, 10), dtype=np.uint8), 'action': action,
                'reward': (rng.random(rows) < 0.1).astype(np.float32), 'terminal': np.arange(rows) == rows - 1,
                'reset': np.arange(rows) == 0}
        path = tmp_path / EpisodeFile(i, i, 0, float(data['reward'].sum()), rows).name
        save_episode(path, data)
        ArtifactFolder(run_id, 'episodes/0').upload(path)


def test_frozen_encoder_and_decoder_stay_as_loaded_through_fine_tuning(mlflow_local, tmp_path):
    pretrained = tmp_path / 'pretrained.pt'
    saved = saved_model(pretrained, config())
    conf = config(model_checkpoint=str(pretrained), freeze_encoder=True, freeze_decoder=True, n_steps=2,
                  eval_interval=0, generator_prefill_steps=0)
    run_id = tracking.start_run(conf, 'finetune')
    _write_episodes(run_id, tmp_path)
    train_finetune.run(conf, run_id)
    payload = read_checkpoint(RunCheckpoints(run_id).download(str(tmp_path / 'out')))
    trained = payload['model']
    assert payload['step'] == 2
    for prefix in ('wm.encoder.', 'wm.decoder.'):            # the decoder holds the reward and terminal heads
        assert equal(part(trained, prefix), part(saved, prefix)), prefix
    for prefix in ('wm.rssm.', 'ac.actor.', 'ac.critic.'):   # trained
        assert not any(torch.equal(trained[k], saved[k]) for k in part(saved, prefix) if k.endswith('weight')), prefix
    tags = tracking.client().get_run(run_id).data.tags
    assert tags['frozen_parts'] == 'wm.encoder,wm.decoder'


def test_resumed_world_model_training_continues_its_optimizer_state(mlflow_local, tmp_path):
    """Adam's step count of the world model's parameters after 2 + 1 steps is 3: the optimizer
    state was restored, not started afresh."""
    data_run = tracking.start_run(config(), 'data')
    _write_episodes(data_run, tmp_path)
    conf = build_config(DEBUG + ['wm_training']).replace(mlflow_run_id=data_run, n_steps=2, eval_interval=0)
    run_id = tracking.start_run(conf, 'wm_training')
    train_wm_only.run(conf, run_id)
    first = read_checkpoint(RunCheckpoints(run_id).download(str(tmp_path / 'first')))
    train_wm_only.run(conf.replace(n_steps=3), run_id)
    resumed = read_checkpoint(RunCheckpoints(run_id).download(str(tmp_path / 'resumed')))
    assert (first['step'], resumed['step']) == (2, 3)
    for payload, steps in ((first, 2), (resumed, 3)):
        state = payload['optimizers']['wm']['state']
        assert state and {float(s['step']) for s in state.values()} == {steps}
        assert payload['optimizers']['actor']['state'] == {}   # world-model-only: the actor never stepped
    assert not equal(part(first['model'], 'wm.'), part(resumed['model'], 'wm.'))
