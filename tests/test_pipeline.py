"""The staged pipeline chained in a temporary folder on the real config sections:
multi-env dataset → world-model-only training → fine-tuning on an unseen game."""
import csv
import subprocess
import sys

import numpy as np
import pytest
import torch

import launch_finetuning
import launch_generator_multi_env
import launch_wm_training
from pydreamer import tracking
from pydreamer.checkpoint import RunCheckpoints, read_checkpoint
from pydreamer.config import PROJECT_ROOT, build_config
from pydreamer.models.dreamer import Dreamer
from experiments import plot_transfer

DEBUG = ['defaults', 'minatar', 'debug']


def _newest_run_id():
    c = tracking.client()
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()], order_by=['attributes.start_time DESC'])
    return runs[0].info.run_id


def _checkpoint(run_id, tmp_path):
    return read_checkpoint(RunCheckpoints(run_id).download(str(tmp_path / run_id)))


def _part(state, prefix):
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    """A dataset run over two games and a world model trained on it, shared by the tests below."""
    work = tmp_path_factory.mktemp('pipeline')
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv('MLFLOW_TRACKING_URI', f'sqlite:///{work}/mlflow.db')
        assert launch_generator_multi_env.main([
            '--configs', *DEBUG, 'generator_multi_env', '--policy_main', 'random', '--generator_prefill_steps', '0',
            '--env_id', '[MinAtar/Breakout-v0, MinAtar/Asterix-v0]', '--n_env_steps', '2000', '--split_fraction', '0.3']) == 0
        data_run = _newest_run_id()
        assert launch_wm_training.main(['--configs', *DEBUG, 'wm_training', '--mlflow_run_id', data_run,
                                        '--n_steps', '12', '--save_interval', '6', '--eval_interval', '6']) == 0
        wm_run = _newest_run_id()
        yield {'work': work, 'data_run': data_run, 'wm_run': wm_run,
               'uri': f'sqlite:///{work}/mlflow.db', 'checkpoint': _checkpoint(wm_run, work)}


@pytest.fixture
def store(pretrained, monkeypatch):
    monkeypatch.chdir(pretrained['work'])
    monkeypatch.setenv('MLFLOW_TRACKING_URI', pretrained['uri'])
    return pretrained


def test_world_model_training_changes_only_the_world_model(store):
    ckpt = store['checkpoint']
    assert ckpt['step'] == 12
    conf = build_config(DEBUG + ['wm_training'])
    torch.manual_seed(conf.seed)
    initial = Dreamer(conf, wm_only=True).state_dict()
    assert _equal(_part(ckpt['model'], 'ac.'), _part(initial, 'ac.'))
    assert not _equal(_part(ckpt['model'], 'wm.'), _part(initial, 'wm.'))
    run = tracking.client().get_run(store['wm_run'])
    assert run.data.tags['data_run_id'] == store['data_run']
    assert 'train/loss_model' in run.data.metrics and 'train/loss_actor' not in run.data.metrics
    assert 'eval/loss_model' in run.data.metrics


def _finetune(store, reference, *extra):
    args = ['--configs', *DEBUG, 'finetune', '--env_id', 'MinAtar/SpaceInvaders-v0', '--model_checkpoint', reference,
            '--generator_prefill_steps', '200', '--save_interval', '5', *extra]
    assert launch_finetuning.main(args) == 0
    return _newest_run_id()


def test_finetune_from_runs_uri_with_frozen_rssm(store, tmp_path):
    run_id = _finetune(store, f'runs:/{store["wm_run"]}/checkpoints/latest.pt', '--n_steps', '8',
                       '--freeze_rssm', 'true')
    ckpt, pre = _checkpoint(run_id, tmp_path), store['checkpoint']
    assert ckpt['step'] == 8
    assert _equal(_part(ckpt['model'], 'wm.rssm.'), _part(pre['model'], 'wm.rssm.'))
    assert not _equal(_part(ckpt['model'], 'wm.encoder.'), _part(pre['model'], 'wm.encoder.'))
    tags = tracking.client().get_run(run_id).data.tags
    assert tags['frozen_parts'] == 'wm.rssm' and tags['pretrained_step'] == '12'


def test_finetune_from_path_stops_training_the_world_model_after_n_steps_wm(store, tmp_path):
    path = tmp_path / 'pretrained.pt'
    torch.save(store['checkpoint'], path)
    run_id = _finetune(store, str(path), '--n_steps', '5', '--n_steps_wm', '5')
    at_switch = _checkpoint(run_id, tmp_path / 'a')
    args = ['--configs', *DEBUG, 'finetune', '--env_id', 'MinAtar/SpaceInvaders-v0', '--resume_id', run_id,
            '--model_checkpoint', str(path), '--n_steps', '10', '--n_steps_wm', '5', '--save_interval', '5']
    assert launch_finetuning.main(args) == 0
    later = _checkpoint(run_id, tmp_path / 'b')
    assert (at_switch['step'], later['step']) == (5, 10)
    assert _equal(_part(later['model'], 'wm.'), _part(at_switch['model'], 'wm.'))
    assert not _equal(_part(later['model'], 'ac.actor.'), _part(at_switch['model'], 'ac.actor.'))


def test_incompatible_checkpoint_is_one_clear_sentence(store):
    out = subprocess.run([sys.executable, str(PROJECT_ROOT / 'launch_finetuning.py'), '--configs', *DEBUG, 'finetune',
                          '--env_id', 'MinAtar/SpaceInvaders-v0', '--deter_dim', '48',
                          '--model_checkpoint', f'runs:/{store["wm_run"]}/checkpoints/latest.pt'],
                         cwd=store['work'], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert 'deter_dim=32 but this config has deter_dim=48' in out.stderr


def test_missing_data_run_is_a_clear_error(store):
    with pytest.raises(tracking.RunNotFoundError, match="'nope' does not exist"):
        launch_wm_training.main(['--configs', *DEBUG, 'wm_training', '--mlflow_run_id', 'nope'])


@pytest.fixture(scope='module')
def transfer_arms(pretrained):
    """The three arms of a transfer experiment `t1` on the unseen game, made here."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(pretrained['work'])
        mp.setenv('MLFLOW_TRACKING_URI', pretrained['uri'])
        common = ['--env_id', 'MinAtar/SpaceInvaders-v0', '--generator_prefill_steps', '200', '--save_interval', '5',
                  '--n_steps', '20']
        for arm, frozen in (('finetune', 'false'), ('finetune_frozen_rssm', 'true')):
            assert launch_finetuning.main(['--configs', *DEBUG, 'finetune', *common, '--freeze_rssm', frozen,
                                           '--model_checkpoint', f'runs:/{pretrained["wm_run"]}/checkpoints/latest.pt',
                                           '--run_tags', f'{{transfer: t1, arm: {arm}, seed: 0}}']) == 0
        out = subprocess.run([sys.executable, str(PROJECT_ROOT / 'launch.py'), '--configs', *DEBUG, *common,
                              '--run_tags', '{transfer: t1, arm: scratch, seed: 0}'],
                             cwd=pretrained['work'], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        yield pretrained


def test_plot_transfer_writes_figure_and_csv_from_the_runs(transfer_arms, store, tmp_path):
    plot_transfer.main(['--transfer', 't1', '--out', str(tmp_path), '--bin-steps', '5'])
    assert (tmp_path / 'transfer_t1.png').stat().st_size > 1000
    with open(tmp_path / 'transfer_t1.csv') as f:
        rows = list(csv.DictReader(f))
    arms = {r['arm'] for r in rows if r['metric'] == 'agent/return'}
    assert arms == {'finetune', 'finetune_frozen_rssm', 'scratch'}
    assert {r['metric'] for r in rows} >= {'agent/return', 'eval/loss_image', 'eval/loss_kl'}
    assert all(np.isfinite(float(r['mean'])) and np.isfinite(float(r['se'])) for r in rows)
    # the zero-shot evaluation: every arm is evaluated before its first update
    assert {r['arm'] for r in rows if r['metric'] == 'eval/loss_image' and float(r['x']) == 0} == arms
    table = (tmp_path / 'transfer_t1.md').read_text()
    assert '| finetune | 1 |' in table and '| random policy |' in table


def test_every_stage_run_is_named_and_tagged_by_what_it_is(transfer_arms, store):
    c = tracking.client()
    runs = {r.info.run_name: r for r in c.search_runs([e.experiment_id for e in c.search_experiments()])}
    assert {'dataset-s0-2games', 'world_model-s0-2games', 'finetune-s0-SpaceInvaders',
            'finetune_frozen_rssm-s0-SpaceInvaders', 'scratch-s0-SpaceInvaders'} <= set(runs)
    assert runs['world_model-s0-2games'].data.tags['game'] == 'Breakout,Asterix'  # the data run's games
    for run in runs.values():
        tags = run.data.tags
        assert {'stage', 'arm', 'game', 'seed'} <= set(tags), run.info.run_name
        assert tags['mlflow.note.content'].startswith(f'stage {tags["stage"]}, arm {tags["arm"]}')
    assert '`agent/return`' in runs['scratch-s0-SpaceInvaders'].data.tags['mlflow.note.content']
    assert '`eval/loss_model`' in runs['world_model-s0-2games'].data.tags['mlflow.note.content']
