import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import launch
from pydreamer import generator, tracking
from pydreamer.artifacts import ArtifactFolder
from pydreamer.config import PROJECT_ROOT, build_config
from pydreamer.envs import make_env
from pydreamer.episodes import EpisodeChunker, load_episode, save_episode
from pydreamer.launching import processes
from pydreamer.launching.cli import run_cli
from pydreamer.policies import RandomPolicy


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


def _stored_rows(run_id, tmp_path, folder='episodes/0'):
    """The rows of a worker's files in the order they were written."""
    files = sorted(ArtifactFolder(run_id, folder).list(), key=lambda pf: (pf[1].ep_from, pf[1].chunk))
    rows = [load_episode(ArtifactFolder(run_id, folder).download(p, str(tmp_path / 'rows'))) for p, _ in files]
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]} if rows else {'reset': np.zeros(0, bool)}


def _stored_steps(run_id, folder='episodes/0'):
    return sum(f.steps for _, f in ArtifactFolder(run_id, folder).list())


def test_stored_actions_replay_the_episode_in_a_fresh_env_with_the_same_seed(tmp_path):
    """Rows written by the generator's episode loop and file writer: stepping a fresh env of the same
    seed with action[t] (the action that led to observation t) reproduces image[t], reward[t] and
    terminal[t], sticky actions included; a reset row holds no action."""
    env = make_env('MinAtar/Breakout-v0', seed=7)
    chunker = EpisodeChunker(10 ** 6)
    policy = RandomPolicy(env.action_dim, seed=1)
    for episode in range(3):
        generator._play_episode(env, policy, 0, episode, chunker, 10 ** 6, with_env_id=False)
    [(name, data)] = chunker.flush()
    save_episode(tmp_path / name.name, data)
    stored = load_episode(tmp_path / name.name)
    replay = make_env('MinAtar/Breakout-v0', seed=7)
    assert stored['reset'].sum() == 3 and stored['reward'].sum() > 0
    for t in range(len(stored['reset'])):
        if stored['reset'][t]:
            assert not stored['action'][t].any() and stored['reward'][t] == 0
            obs = replay.reset()
        else:
            assert stored['action'][t].sum() == 1
            obs, reward, terminated, _ = replay.step(int(stored['action'][t].argmax()))
            assert (reward, terminated) == (stored['reward'][t], stored['terminal'][t]), t
        assert np.array_equal(obs['image'], stored['image'][t]), t
    env.close()
    replay.close()


def _network_run(conf, tmp_path, step):
    """A run whose learner has written a checkpoint at `step`."""
    run_id = tracking.start_run(conf, 'test')
    _publish_checkpoint(run_id, conf, step, tmp_path)
    return run_id


def _publish_checkpoint(run_id, conf, step, tmp_path):
    """A fresh model's checkpoint at learner step `step` as the run's checkpoints/latest.pt."""
    import torch

    from pydreamer.checkpoint import RunCheckpoints, save_checkpoint
    from pydreamer.models.dreamer import Dreamer

    torch.manual_seed(step)
    model = Dreamer(conf)
    path = tmp_path / f'checkpoint-{step}' / 'latest.pt'
    save_checkpoint(path, step, model, {}, conf.to_dict())
    RunCheckpoints(run_id).upload(path)


def test_the_main_policy_takes_over_at_the_episode_boundary_after_the_prefill(mlflow_local, tmp_path):
    """The random prefill plays the episode that crosses generator_prefill_steps to its real end;
    the network policy plays every episode from the next one on."""
    conf = build_config(['defaults', 'minatar', 'debug']).replace(
        generator_workers=1, generator_prefill_steps=100, n_env_steps=260, split_fraction=0.0)
    run_id = _network_run(conf, tmp_path, step=5)
    generator.run(conf, run_id, 0)
    rows = _stored_rows(run_id, tmp_path)
    starts = np.flatnonzero(rows['reset'])
    ends = np.append(starts[1:], len(rows['reset']))           # rows stored up to each episode's end
    by_policy = {name: sorted(m.step for m in _metric_history(run_id, f'agent/policy_{name}'))
                 for name in ('random', 'network')}
    assert sorted(by_policy['random'] + by_policy['network']) == list(ends)
    crossing = len(by_policy['random']) - 1                    # the last prefill episode
    assert by_policy['random'][-1] < by_policy['network'][0]
    assert starts[crossing] < 100 < ends[crossing]             # it started in the prefill and went past it
    assert rows['terminal'][ends[crossing] - 1]                # to a real game over
    assert ends[-1] == 260


def _thread_waits_in(thread, function: str) -> bool:
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def _wait_until(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.05)


def test_limit_step_ratio_pauses_the_generator_until_the_learner_catches_up(mlflow_local, tmp_path, monkeypatch):
    """limit_step_ratio 40 with the learner's checkpoint at step 1: the generator stops after the
    episode that takes it past 40 stored steps and stays paused, also after it has looked for a
    newer checkpoint (every 2 s); a checkpoint at step 2 lets it play on."""
    conf = build_config(['defaults', 'minatar', 'debug']).replace(
        generator_workers=1, generator_prefill_steps=0, n_env_steps=10 ** 6, split_fraction=0.0,
        file_min_steps=1, limit_step_ratio=40.0, policy_reload_interval=3600)
    run_id = _network_run(conf, tmp_path, step=1)
    worker = threading.Thread(target=generator.run, args=(conf, run_id, 0))
    worker.start()
    try:
        _wait_until(lambda: _thread_waits_in(worker, 'wait_for_learner'))
        rows = _stored_rows(run_id, tmp_path)
        last_episode = len(rows['reset']) - np.flatnonzero(rows['reset'])[-1]
        # every episode is in a file before the pause, which began right after the one that passed the limit
        assert len(rows['reset']) - last_episode <= 40 < len(rows['reset'])
        time.sleep(2.1)
        assert _thread_waits_in(worker, 'wait_for_learner') and _stored_steps(run_id) == len(rows['reset'])
        _publish_checkpoint(run_id, conf, 2, tmp_path)
        _wait_until(lambda: _stored_steps(run_id) > len(rows['reset']))
    finally:
        monkeypatch.setattr(processes, '_stop_requested', True)
        worker.join(60)
    assert not worker.is_alive()
