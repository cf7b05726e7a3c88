"""evaluate.py: a Dreamer checkpoint of a tiny debug training and a DQN agent folder played in the
real environment, recorded as an mlflow run; each bad reference is one sentence and exit code 2."""
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
from atari_net import AtariNet
from atari_net.checkpoint import save_atari_net
from dqn.networks import ConvQNetwork
from pydreamer import tracking
from pydreamer.checkpoint import RunCheckpoints, read_checkpoint, save_checkpoint
from pydreamer.config import build_config
from pydreamer.envs import make_env
from pydreamer.evaluation import read_source
from pydreamer.launching.cli import run_cli
from pydreamer.models.dreamer import Dreamer
from pydreamer.preprocess import preprocess
from pydreamer.train_step import init_optimizers, train_step
from tests.test_dreams import MINATAR, played_batch

torch.set_num_threads(1)

UNKNOWN_RUN = '0123456789abcdef0123456789abcdef'


@pytest.fixture(scope='module')
def store(tmp_path_factory, mlflow_template_db):
    """A run named 'trained' whose checkpoints/latest.pt holds a debug Dreamer after 3 learner steps
    on real Breakout play, saved and uploaded as the learner does; and a folder of two DQN agents."""
    work = tmp_path_factory.mktemp('evaluate')
    shutil.copyfile(mlflow_template_db, work / 'mlflow.db')
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv('MLFLOW_TRACKING_URI', f'sqlite:///{work}/mlflow.db')
        conf = build_config(MINATAR)
        torch.manual_seed(0)
        model = Dreamer(conf)
        optimizers = init_optimizers(model, conf)
        obs = preprocess(played_batch(conf, ['MinAtar/Breakout-v0'], conf.batch_length, conf.batch_size), conf)
        state = model.init_state(conf.batch_size)
        for _ in range(3):
            state, _ = train_step(model, obs, state, optimizers)
        c = tracking.client()
        run_id = c.create_run(c.create_experiment('pydreamer'), run_name='trained').info.run_id
        save_checkpoint(work / 'latest.pt', 3, model, optimizers, conf.to_dict())
        RunCheckpoints(run_id).upload(work / 'latest.pt')
    dqn = work / 'dqn_breakout'
    dqn.mkdir()
    for step in (100, 200):
        torch.save(ConvQNetwork(4, 6).state_dict(), dqn / f'model_{step}.pt')
    (work / 'empty').mkdir()
    return {'work': work, 'run_id': run_id, 'uri': f'runs:/{run_id}/checkpoints/latest.pt', 'local': work / 'latest.pt',
            'dqn': dqn, 'empty': work / 'empty'}


@pytest.fixture
def trained(store, monkeypatch):
    """The store as the tracking store and working directory; `new_runs()` lists the evaluation runs made since."""
    monkeypatch.chdir(store['work'])
    monkeypatch.setenv('MLFLOW_TRACKING_URI', f'sqlite:///{store["work"]}/mlflow.db')
    before = {r.info.run_id for r in _evaluation_runs()}
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield {**store, 'new_runs': lambda: [r for r in _evaluation_runs() if r.info.run_id not in before]}
    root.handlers[:], root.level = handlers, level  # run_cli configures logging for a launcher process


def _evaluate(capsys, *args):
    code = run_cli(evaluate.main, 'evaluate', list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _evaluation_runs():
    c = tracking.client()
    return c.search_runs([e.experiment_id for e in c.search_experiments()], "tags.stage = 'evaluate'")


def test_a_dreamer_checkpoint_of_a_run_is_played_and_recorded(trained, capsys, tmp_path):
    code, out, err = _evaluate(capsys, '--checkpoint', trained['uri'], '--env_id', 'MinAtar/Breakout-v0',
                               '--episodes', '3')
    assert code == 0, err
    assert '| trained (step 3) | MinAtar/Breakout-v0 | sampled | 3 |' in out
    [run] = trained['new_runs']()
    assert run.info.status == 'FINISHED' and run.info.run_name == 'evaluate-trained'
    assert run.data.tags['source_run_id'] == trained['run_id'] and run.data.tags['agent'] == 'dreamer'
    c = tracking.client()
    returns = [m.value for m in c.get_metric_history(run.info.run_id, 'eval/episode_return')]
    lengths = [m.value for m in c.get_metric_history(run.info.run_id, 'eval/episode_length')]
    assert len(returns) == len(lengths) == 3 and min(lengths) >= 1
    metrics = run.data.metrics
    assert metrics['eval/return'] == pytest.approx(np.mean(returns))
    assert metrics['eval/return_stderr'] == pytest.approx(np.std(returns, ddof=1) / np.sqrt(3))
    assert metrics['eval/length'] == pytest.approx(np.mean(lengths)) and metrics['eval/episodes'] == 3
    assert f'{metrics["eval/return"]:.2f} ± {metrics["eval/return_stderr"]:.2f}' in out
    video = c.download_artifacts(run.info.run_id, 'videos/episode_0.gif', str(tmp_path / 'dl'))
    assert Image.open(video).n_frames == lengths[0] + 1  # the reset frame and one per step
    assert {a.path for a in c.list_artifacts(run.info.run_id)} == {'evaluation.md', 'videos'}


def test_the_actor_plays_with_the_checkpoint_weights(trained):
    payload = read_checkpoint(trained['local'])
    source = read_source(trained['local'], 'latest.pt')
    env = make_env('MinAtar/Breakout-v0', seed=0)
    actor = source.policy(env, greedy=True, seed=1)
    state = actor.model.state_dict()
    assert state.keys() == payload['model'].keys() and all(torch.equal(state[k], payload['model'][k]) for k in state)
    obs = env.reset()
    assert actor({**obs, 'reset': True})[0] in range(6) and actor.greedy


def test_a_dqn_folder_is_played_greedily(trained, capsys):
    code, out, err = _evaluate(capsys, '--checkpoint', str(trained['dqn']), '--env_id', 'MinAtar/Breakout-v0',
                               '--episodes', '2', '--greedy', '--run_name', 'dqn-eval')
    assert code == 0, err
    assert '| greedy | 2 |' in out
    [run] = trained['new_runs']()
    assert run.info.run_name == 'dqn-eval' and run.data.tags['agent'] == 'dqn'
    assert run.data.tags['dqn_checkpoints'] == 'model_100.pt, model_200.pt' and 'source_run_id' not in run.data.tags


def test_a_dqn_modern_folder_plays_atari(trained, capsys, tmp_path):
    folder = tmp_path / 'Pong'
    save_atari_net(AtariNet(6), folder / '0', 1_000_000)  # Pong's 6 minimal actions
    code, out, err = _evaluate(capsys, '--checkpoint', str(folder), '--env_id', 'Atari-Pong', '--episodes', '1',
                               '--time_limit', '20')
    assert code == 0, err
    assert '| 1 |' in out and '| 20.0 ± 0.0 |' in out  # cut by the time limit
    [run] = trained['new_runs']()
    assert run.data.tags['agent'] == 'atari_net' and run.data.tags['atari_net_checkpoints'] == 'model_01000000.gz'
    video = tracking.client().download_artifacts(run.info.run_id, 'videos/episode_0.gif', str(tmp_path / 'dl'))
    assert Image.open(video).n_frames == 21 and Image.open(video).width >= 3 * 64


BAD = [
    (['--checkpoint', 'nowhere.pt'], ['Agent nowhere.pt does not exist', 'Dreamer checkpoint']),
    (['--checkpoint', f'runs:/{UNKNOWN_RUN}/checkpoints/latest.pt'], [f"mlflow run '{UNKNOWN_RUN}' does not exist"]),
    (['--checkpoint', 'runs:/{run_id}/checkpoints/other.pt'], ['Run {run_id} has no artifact checkpoints/other.pt']),
    (['--checkpoint', '{uri}', '--env_id', 'MinAtar/Breakout-v1'],
     ['{uri} was trained with 6 actions but MinAtar/Breakout-v1 has 3']),
    (['--checkpoint', '{uri}', '--env_id', 'CartPole-v1'],
     ['{uri} reads 10x10 categorical images but CartPole-v1 gives vectors of size 4']),
    (['--checkpoint', '{dqn}', '--env_id', 'MinAtar/Seaquest-v0'],
     ['{dqn} read 4 observation channels but MinAtar/Seaquest-v0 gives 10']),
    (['--checkpoint', '{dqn}', '--env_id', 'CartPole-v1'], ['{dqn} play MinAtar, but CartPole-v1 gives vectors']),
    (['--checkpoint', '{empty}'], ['{empty} holds neither DQN checkpoints']),
    (['--checkpoint', '{dqn}/model_100.pt', '--env_id', 'MinAtar/Breakout-v1'], ['have 6 actions but MinAtar/Breakout-v1 has 3']),
    (['--checkpoint', '{uri}', '--env_id', 'MinAtar/Pong-v0'], ["Unknown environment id 'MinAtar/Pong-v0'"]),
]


@pytest.mark.parametrize('args,words', BAD, ids=[f'{i:02d}' for i in range(len(BAD))])
def test_a_bad_reference_is_one_sentence_and_creates_no_run(trained, capsys, args, words):
    names = {key: trained[key] for key in ('run_id', 'uri', 'dqn', 'empty')}
    args = [a.format(**names) for a in args]
    if '--env_id' not in args:
        args += ['--env_id', 'MinAtar/Breakout-v0']
    code, out, err = _evaluate(capsys, *args)
    errors = [line for line in err.splitlines() if line.startswith('error: ')]
    assert code == 2 and len(errors) == 1 and 'Traceback' not in err, err
    sentence = errors[0][len('error: '):]
    assert sentence.endswith('.') and 'pydreamer-' not in sentence, sentence
    for word in words:
        assert word.format(**names) in sentence, sentence
    assert not trained['new_runs']()


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.parse_args(['--help'])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ('--checkpoint', '--env_id', '--episodes', '--greedy', 'runs:/'))
