"""A new user's mistakes across the four launchers, as a catalogue: each one ends with exit code 2
and one `error:` sentence that names the key or thing and what was expected, said once, before
any process starts; no run is left RUNNING or KILLED and no file of an existing run changes.

Most mistakes go through the launcher's CLI entry in this process (they are caught before any
child starts); a few run the launcher script itself, as a user would.
"""
import hashlib
import logging
import subprocess
import sys

import pytest
import torch

import launch
import launch_finetuning
import launch_generator_multi_env
import launch_wm_training
import train_wm_only
from pydreamer import tracking
from pydreamer.artifacts import ArtifactFolder
from pydreamer.checkpoint import FORMAT_VERSION
from pydreamer.config import PROJECT_ROOT, build_config
from pydreamer.data import EpisodeIndex
from pydreamer.launching.cli import run_cli

LAUNCHERS = {'launch': launch, 'generator_multi_env': launch_generator_multi_env,
             'wm_training': launch_wm_training, 'finetuning': launch_finetuning}
DEBUG = ['--configs', 'defaults', 'minatar', 'debug']
MULTI = ['--configs', 'defaults', 'minatar', 'generator_multi_env', 'debug', '--policy_main', 'random']
WM = ['--configs', 'defaults', 'minatar', 'debug', 'wm_training', '--mlflow_run_id', '{data}']
FINETUNE = ['--configs', 'defaults', 'minatar', 'debug', 'finetune', '--env_id', 'MinAtar/SpaceInvaders-v0']
TRUNCATED = 'runs:/{truncated}/checkpoints/latest.pt'

# (launcher, arguments, words the sentence holds, run the script in a subprocess);
# {data} is a real dataset run, {truncated} a finished run whose checkpoint is cut in half.
CATALOGUE = [
    ('launch', [], ['env_id is not set', '--configs defaults minatar'], True),
    ('launch', ['minatar'], ["'minatar'", 'expected --configs <sections> or --<key> <value>'], False),
    ('launch', ['--configs', 'defaults', 'minatr'], ["'minatr'", "did you mean 'minatar'"], False),
    ('launch', [*DEBUG, '--n_stepz', '3'], ["'n_stepz'", "did you mean 'n_steps'"], False),
    ('launch', [*DEBUG, '--n_steps', 'many'], ["'n_steps'", 'expected an int'], False),
    ('launch', [*DEBUG, '--n_steps', '-5'], ['n_steps is -5', 'expected at least 0'], False),
    ('generator_multi_env', [*MULTI, '--n_env_steps', '-100'], ['n_env_steps is -100', 'expected at least 1'], False),
    ('generator_multi_env', [*MULTI, '--n_env_steps'], ['--n_env_steps', 'needs a value'], False),
    ('launch', [*DEBUG, '--eval_interval', '-1'], ['eval_interval is -1', 'expected at least 0'], False),
    ('launch', [*DEBUG, '--save_interval', '0'], ['save_interval is 0', 'expected at least 1'], False),
    ('wm_training', [*WM, '--log_interval', '0'], ['log_interval is 0', 'expected at least 1'], False),
    ('wm_training', [*WM, '--resume_id', '{data}', '--batch_size', '0'], ['batch_size is 0', 'expected at least 1'], False),
    ('generator_multi_env', [*MULTI, '--resume_id', '{data}', '--split_fraction', '2'],
     ['split_fraction is 2.0', 'expected between 0 and 1'], False),
    ('launch', [*DEBUG, '--clip_rewards', 'clip'], ["clip_rewards is 'clip'", 'expected one of none, tanh, log1p, sign'], False),
    ('launch', [*DEBUG, '--device', 'gpu'], ["device is 'gpu'", 'expected auto, cpu, cuda or cuda:<index>'], False),
    ('launch', [*DEBUG, '--amp', 'maybe'], ["amp is 'maybe'", 'expected one of auto, true, false'], False),
    ('launch', [*DEBUG, '--gru_type', 'lstm'], ["gru_type is 'lstm'", 'expected one of gru, gru_layernorm'], False),
    ('launch', [*DEBUG, '--image_encoder', 'resnet'], ["image_encoder is 'resnet'", 'expected one of cnn, cnn_minatar'], False),
    ('wm_training', [*WM, '--image_decoder', 'resnet'], ["image_decoder is 'resnet'", 'expected one of cnn, cnn_minatar'], False),
    ('wm_training', [*WM, '--image_loss', 'l1'], ["image_loss is 'l1'", 'expected one of mse, categorical'], False),
    ('launch', [*DEBUG, '--actor_grad', 'straight'], ["actor_grad is 'straight'", 'expected one of reinforce, dynamics'], False),
    ('finetuning', [*FINETUNE, '--actor_dist', 'gaussian'], ["actor_dist is 'gaussian'", 'expected one of onehot'], False),
    ('finetuning', [*FINETUNE, '--load_parts', 'everything'], ["load_parts is 'everything'", 'expected one of wm, all'], False),
    ('launch', [*DEBUG, '--policy_main', 'greedy'], ["policy_main is 'greedy'", 'expected one of random, network'], False),
    ('generator_multi_env', [*MULTI, '--generator_prefill_policy', 'expert'],
     ["generator_prefill_policy is 'expert'", 'expected one of random'], False),
    ('launch', [*DEBUG, '--run_tags', 'seed=1'], ["run_tags is 'seed=1'", 'expected a map'], False),
    ('generator_multi_env', [*MULTI, '--dqn_dir', 'dqn_checkpoints'], ["dqn_dir is 'dqn_checkpoints'", 'expected a map'], False),
    ('generator_multi_env', ['--configs', 'defaults', 'atari', 'generator_multi_env_atari', '--atari_net_dir', '[a]'],
     ["atari_net_dir is ['a']", 'expected a map'], False),
    ('launch', [*DEBUG, '--env_id', '5'], ['env_id is 5', 'expected a string or a list'], False),
    ('generator_multi_env', [*MULTI, '--env_id', 'MinAtar/Breakout-v0'], ['env_id must be a list', '[MinAtar/Breakout-v0]'], False),
    ('launch', [*DEBUG, '--env_id', 'MinAtar/Pong-v0'], ["'MinAtar/Pong-v0'", 'expected MinAtar/<Game>-v0|v1'], False),
    ('launch', ['--configs', 'defaults', 'atari', '--env_id', 'MinAtar/Breakout-v0'],
     ['env_action_repeat is 4', 'MinAtar/Breakout-v0 needs 1'], True),
    ('launch', [*DEBUG, '--action_dim', '4'], ['action_dim is 4', 'MinAtar/Breakout-v0 has 6 actions'], False),
    ('launch', ['--configs', 'defaults', 'minatar', '--env_id', 'CartPole-v1', '--action_dim', '2'],
     ['CartPole-v1 gives a vector observation of size 4', 'image_encoder cnn_minatar', '--configs defaults vector'], False),
    ('finetuning', ['--configs', 'defaults', 'atari', 'finetune', '--env_id', 'AtariGray-Pong', '--model_checkpoint', 'x.pt'],
     ['AtariGray-Pong gives 64x64x1 images', 'image_channels 3', '--image_channels 1'], False),
    ('launch', ['--configs', 'defaults', 'atari', 'debug', '--image_loss', 'categorical'],
     ['image_loss is categorical', 'image_categorical true', 'expected mse'], False),
    ('wm_training', [*WM, '--gru_layers', '3'], ['deter_dim is 32', 'multiple of gru_layers (3)'], False),
    ('wm_training', [*WM, '--image_encoder', 'none'], ['image_encoder none and vecobs_size 0', 'no observation'], False),
    ('launch', [*DEBUG, '--n_steps', '0'], ['data-only run (n_steps 0)', 'set policy_main to random'], False),
    ('launch', [*DEBUG, '--generator_workers', '0'], ['generator_workers is 0', 'expected at least 1'], False),
    ('wm_training', WM[:-2], ['mlflow_run_id is empty', 'id of the dataset run'], False),
    ('wm_training', [*WM[:-1], 'nope'], ["mlflow run 'nope' does not exist"], False),
    ('launch', [*DEBUG, '--resume_id', 'nope'], ["mlflow run 'nope' does not exist"], False),
    ('launch', [*DEBUG, '--resume_id', '{truncated}'], [TRUNCATED, 'could not be read'], True),
    ('wm_training', [*WM, '--resume_id', '{truncated}'], [TRUNCATED, 'could not be read'], False),
    ('finetuning', FINETUNE, ['model_checkpoint is empty', 'runs:/<run_id>/checkpoints/latest.pt'], False),
    ('finetuning', [*FINETUNE, '--model_checkpoint', 'nowhere.pt'], ['nowhere.pt does not exist'], False),
    ('finetuning', [*FINETUNE, '--model_checkpoint', TRUNCATED], [TRUNCATED, 'could not be read'], False),
]


def _runs():
    c = tracking.client()
    return c.search_runs([e.experiment_id for e in c.search_experiments()])


@pytest.fixture(scope='module')
def store(tmp_path_factory):
    """A real dataset run, made by the multi-env generator on the sections the issue named
    (`generator_multi_env debug`: debug's n_steps is a key that stage does not use), and a
    finished run whose checkpoints/latest.pt is cut in half."""
    work = tmp_path_factory.mktemp('bad_input')
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv('MLFLOW_TRACKING_URI', f'sqlite:///{work}/mlflow.db')
        assert launch_generator_multi_env.main([
            *MULTI, '--env_id', '[MinAtar/Breakout-v0, MinAtar/Asterix-v0]', '--generator_prefill_steps', '0',
            '--n_env_steps', '600', '--split_fraction', '0.3', '--run_name', 'data']) == 0
        data = _runs()[0].info.run_id
        assert all(ArtifactFolder(data, split).list_subfolders() for split in ('episodes', 'episodes_eval'))
        yield {'work': work, 'ids': {'data': data, 'truncated': _truncated_checkpoint_run(work)}}


def _truncated_checkpoint_run(work) -> str:
    c = tracking.client()
    run_id = c.create_run(c.get_experiment_by_name('pydreamer').experiment_id, run_name='truncated').info.run_id
    path = work / 'latest.pt'
    torch.save({'format_version': FORMAT_VERSION, 'step': 10, 'model': {'w': torch.zeros(10_000)}}, path)
    path.write_bytes(path.read_bytes()[:20_000])
    c.log_artifact(run_id, str(path), 'checkpoints')
    path.unlink()
    c.set_terminated(run_id, 'FINISHED')
    return run_id


@pytest.fixture
def in_store(store, monkeypatch):
    monkeypatch.chdir(store['work'])
    monkeypatch.setenv('MLFLOW_TRACKING_URI', f'sqlite:///{store["work"]}/mlflow.db')
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield store
    root.handlers[:], root.level = handlers, level  # run_cli configures logging for a launcher process


def _snapshot(work):
    """Every artifact file's hash, and every run's status and end time."""
    files = {str(p.relative_to(work)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted((work / 'mlruns').rglob('*')) if p.is_file()}
    return files, {r.info.run_id: (r.info.status, r.info.end_time) for r in _runs()}


def _run_launcher(name, argv, as_script, work, capsys):
    if as_script:
        out = subprocess.run([sys.executable, str(PROJECT_ROOT / f'{LAUNCHERS[name].__name__}.py'), *argv],
                             cwd=work, capture_output=True, text=True, timeout=120)
        return out.returncode, out.stderr
    code = run_cli(LAUNCHERS[name].main, name, argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize('name,args,words,as_script', CATALOGUE,
                         ids=[f'{i:02d}-{c[0]}' for i, c in enumerate(CATALOGUE)])
def test_a_mistake_is_one_sentence_and_changes_nothing(in_store, capsys, name, args, words, as_script):
    ids = in_store['ids']
    before = _snapshot(in_store['work'])
    code, err = _run_launcher(name, [a.format(**ids) for a in args], as_script, in_store['work'], capsys)
    errors = [line for line in err.splitlines() if line.startswith('error: ')]
    assert code == 2 and len(errors) == 1 and 'Traceback' not in err, err
    sentence = errors[0][len('error: '):]
    assert err.count(sentence) == 1, err                     # not logged as well
    assert sentence.endswith('.') and 'pydreamer-' not in sentence, sentence  # no temporary path
    for word in words:
        assert word.format(**ids) in sentence, sentence
    after = _snapshot(in_store['work'])
    assert after == before
    assert not {status for status, _ in after[1].values()} & {'RUNNING', 'KILLED'}


def test_a_key_the_stage_does_not_use_is_ignored(in_store):
    run = tracking.client().get_run(in_store['ids']['data'])
    assert run.info.status == 'FINISHED' and run.data.params['n_steps'] == '100'


def test_eval_interval_0_means_never(in_store):
    conf = build_config(['defaults', 'minatar', 'debug', 'wm_training'],
                        {'mlflow_run_id': in_store['ids']['data'], 'n_steps': 4, 'log_interval': 2, 'eval_interval': 0})
    run_id = tracking.start_run(conf, 'wm_training')
    train_wm_only.run(conf, run_id)
    tracking.end_run(run_id)
    metrics = tracking.client().get_run(run_id).data.metrics
    assert 'train/loss_model' in metrics and not [k for k in metrics if k.startswith('eval/')]


def test_a_corrupt_episode_file_is_named_by_its_artifact_path(in_store, caplog):
    c = tracking.client()
    run_id = c.create_run(c.get_experiment_by_name('pydreamer').experiment_id, run_name='corrupt').info.run_id
    path = in_store['work'] / 'ep000000_000000-0-r0-0100.npz'
    path.write_bytes(b'PK\x03\x04 not a zip')
    c.log_artifact(run_id, str(path), 'episodes/0')
    c.set_terminated(run_id, 'FINISHED')
    index = EpisodeIndex(run_id, 'episodes', 10 ** 6, 0)
    index.refresh(force=True)
    with caplog.at_level(logging.WARNING):
        assert index.load(index.files[0][0]) is None
    index.close()
    assert f'Episode file runs:/{run_id}/episodes/0/{path.name} cannot be read' in caplog.text
    assert str(index.cache_dir) not in caplog.text
