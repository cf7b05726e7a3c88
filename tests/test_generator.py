import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import launch
from pydreamer import generator, processes, tracking
from pydreamer.artifacts import ArtifactFolder
from pydreamer.cli import run_cli
from pydreamer.config import PROJECT_ROOT, build_config
from pydreamer.episodes import load_episode


def _files(run_id, folder):
    return sorted((f for sub in ArtifactFolder(run_id, folder).list_subfolders()
                   for f in ArtifactFolder(run_id, sub).list()), key=lambda f: f[1].ep_from)


def _metric_history(run_id, key):
    return tracking.client().get_metric_history(run_id, key)


def test_launch_random_run_writes_episodes_and_metrics(mlflow_local, tmp_path):
    code = launch.main(['--configs', 'defaults', 'minatar', 'debug', '--n_steps', '0', '--policy_main', 'random', '--n_env_steps', '700',
                        '--generator_workers', '2', '--split_fraction', '0.3', '--run_name', 'gen-test'])
    assert code == 0
    run = tracking.client().search_runs(
        [tracking.client().get_experiment_by_name('pydreamer').experiment_id])[0]
    assert run.info.status == 'FINISHED' and run.data.params['env_id'] == 'MinAtar/Breakout-v0'
    train, evals = _files(run.info.run_id, 'episodes'), _files(run.info.run_id, 'episodes_eval')
    assert {p.split('/')[1] for p, _ in train + evals} == {'0', '1'}
    assert sum(f.steps for _, f in train + evals) == 700
    path = ArtifactFolder(run.info.run_id, 'episodes').download(train[0][0], str(tmp_path))
    data = load_episode(path)
    assert data['image'].shape[1:] == (10, 10) and data['image'].dtype == np.uint8
    assert data['action'].shape[1:] == (6,) and data['reset'][0]
    assert len(data['reset']) == train[0][1].steps
    # Every logged (step, return, length) is what the stored rows of that worker say, where step
    # counts the worker's rows up to the episode's end. Sets: the store drops exact duplicates.
    logged = {(m.step, m.value) for m in _metric_history(run.info.run_id, 'agent/return')}
    lengths = {(m.step, m.value) for m in _metric_history(run.info.run_id, 'agent/episode_length')}
    stored, stored_lengths = set(), set()
    for worker in ('0', '1'):
        files = sorted(((p, f) for p, f in train + evals if p.split('/')[1] == worker),
                       key=lambda pf: (pf[1].ep_to, pf[1].chunk))
        folder = ArtifactFolder(run.info.run_id, '')
        rows = [load_episode(folder.download(p, str(tmp_path / 'all' / worker))) for p, _ in files]
        reward = np.concatenate([r['reward'] for r in rows])
        starts = np.flatnonzero(np.concatenate([r['reset'] for r in rows]))
        ends = np.append(starts[1:], len(reward))
        stored |= {(int(end), float(reward[start:end].sum())) for start, end in zip(starts, ends)}
        stored_lengths |= {(int(end), float(end - start)) for start, end in zip(starts, ends)}
    assert len(logged) >= 10 and any(value > 0 for _, value in logged)
    assert logged == stored and lengths == stored_lengths
    assert ArtifactFolder(run.info.run_id, '').exists('config.yaml')


def test_resume_continues_numbering_and_never_overwrites(mlflow_local):
    conf = build_config(['defaults', 'minatar', 'debug']).replace(generator_workers=1, n_env_steps=400,
                                                                    policy_main='random')
    run_id = tracking.start_run(conf, 'test')
    generator.run(conf, run_id, 0)
    first = _files(run_id, 'episodes') + _files(run_id, 'episodes_eval')
    assert sum(f.steps for _, f in first) == 400
    generator.run(conf.replace(n_env_steps=900, resume_id=run_id), run_id, 0)
    after = _files(run_id, 'episodes') + _files(run_id, 'episodes_eval')
    assert set(first) <= set(after)
    new = [f for p, f in after if (p, f) not in set(first)]
    assert new and min(f.ep_from for f in new) > max(f.ep_to for _, f in first)
    assert sum(f.steps for _, f in after) == 900
    generator.run(conf.replace(n_env_steps=900), run_id, 0)  # target reached: nothing more is written
    assert len(_files(run_id, 'episodes') + _files(run_id, 'episodes_eval')) == len(after)


def test_multi_env_generator_balances_games_and_tags_env_id(mlflow_local, tmp_path):
    games = ['MinAtar/Breakout-v0', 'MinAtar/Asterix-v0']
    conf = build_config(['defaults', 'minatar', 'debug']).replace(env_id=games, generator_workers=1, policy_main='random',
                                                                    n_env_steps=1500, split_fraction=0.0)
    run_id = tracking.start_run(conf, 'test')
    generator.run(conf, run_id, 0)
    folder = ArtifactFolder(run_id, 'episodes')
    env_ids = np.concatenate([load_episode(folder.download(p, str(tmp_path)))['env_id']
                              for p, _ in _files(run_id, 'episodes')])
    counts = np.bincount(env_ids, minlength=2)
    assert counts.sum() == 1500 and counts.min() > 0.25 * counts.sum()


@pytest.mark.parametrize('args,message', [
    (['--env_id', 'MinAtar/Pacman-v0'], 'MinAtar/Pacman-v0'),
    (['--n_stepz', '5'], "did you mean 'n_steps'"),
    (['--batch_size', 'big'], "Bad value 'big' for config key 'batch_size'"),
    (['--configs', 'defaults', 'minatar', '--action_dim', '3'], 'action_dim is 3'),
    (['--configs', 'defaults', 'minatar', '--resume_id', 'abc123'], "mlflow run 'abc123' does not exist"),
])
def test_bad_input_is_one_sentence_and_exit_code_2(mlflow_local, capsys, args, message):
    assert run_cli(launch.main, 'launch', args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and message in errors[0]
    assert not tracking.client().search_runs([e.experiment_id for e in tracking.client().search_experiments()])


def test_bad_input_exits_the_process_with_code_2(tmp_path):
    out = subprocess.run([sys.executable, str(PROJECT_ROOT / 'launch.py'), '--env_id', 'Foo-v9'], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and 'Foo-v9' in errors[0]
    assert not (tmp_path / 'mlruns').exists()


def test_prefill_episodes_and_metrics_are_stored_before_waiting_for_the_first_checkpoint(mlflow_local, monkeypatch):
    conf = build_config(['defaults', 'minatar', 'debug']).replace(generator_workers=1, generator_prefill_steps=300,
                                                                    metrics_interval=3600)
    run_id = tracking.start_run(conf, 'test')
    worker = threading.Thread(target=generator.run, args=(conf, run_id, 0))
    worker.start()
    try:
        deadline = time.time() + 180  # generous for a busy machine; the loop ends when the metrics arrive
        while not _metric_history(run_id, 'agent/return') and time.time() < deadline:
            time.sleep(0.5)
        # the learner has written no checkpoint: the generator now waits with everything stored
        assert worker.is_alive()
        assert sum(f.steps for _, f in _files(run_id, 'episodes') + _files(run_id, 'episodes_eval')) >= 300
        returns = _metric_history(run_id, 'agent/return')
        assert returns and len(returns) == len(_metric_history(run_id, 'agent/policy_random'))
    finally:
        monkeypatch.setattr(processes, '_stop_requested', True)
        worker.join(120)
    assert not worker.is_alive()
