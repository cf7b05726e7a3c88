"""End-to-end: launch.py with generators and a learner, on the real `debug` config section."""
import csv
import os
import re
import signal
import subprocess
import sys
import time

from experiments import learning_run, plot_learning
from pydreamer import tracking
from pydreamer.checkpoint import RunCheckpoints, read_checkpoint
from pydreamer.config import PROJECT_ROOT

LAUNCH = [sys.executable, str(PROJECT_ROOT / 'launch.py'), '--configs', 'defaults', 'minatar', 'debug']


def _launch(args, cwd, timeout=600):  # a debug run takes ~35 s on a busy 2-core machine
    return subprocess.run(LAUNCH + args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _only_run():
    c = tracking.client()
    runs = c.search_runs([c.get_experiment_by_name('pydreamer').experiment_id])
    assert len(runs) == 1
    return runs[0]


def _checkpoint_step(run_id, tmp_path):
    local = RunCheckpoints(run_id).download(str(tmp_path / 'ckpt'))
    return None if local is None else read_checkpoint(local)['step']


def test_debug_run_trains_and_generates_with_the_network_policy(mlflow_local, tmp_path):
    out = _launch(['--run_name', 'e2e'], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = _only_run()
    assert run.info.status == 'FINISHED'
    run_id = run.info.run_id
    assert _checkpoint_step(run_id, tmp_path) == 100
    history = tracking.client().get_metric_history(run_id, 'train/loss_model')
    assert [m.step for m in history] == list(range(5, 101, 5))
    # the world model learns: measured 51.4 -> 22.2 (train), 51.9 -> 21.9 (eval, held-out files)
    assert history[-1].value < 0.6 * history[0].value
    evals = tracking.client().get_metric_history(run_id, 'eval/loss_model')
    assert evals[0].step == 0 and evals[-1].value < 0.6 * evals[0].value
    for key in ('train/loss_kl', 'train/loss_image', 'train/loss_reward', 'train/loss_terminal',
                'train/entropy_prior', 'train/entropy_post', 'train/loss_actor', 'train/loss_critic',
                'train/policy_entropy', 'train/policy_value', 'train/grad_norm_wm', 'train/fps',
                'eval/loss_model', 'agent/return', 'agent/policy_value', 'agent/policy_entropy'):
        assert key in run.data.metrics, key
    names = {a.path for a in tracking.client().list_artifacts(run_id, 'dreams')}
    assert {'dreams/dream_0000100.png', 'dreams/dream_0000100.gif'} <= names
    assert tracking.client().list_artifacts(run_id, 'episodes')

    plot_learning.main(['--run', 'e2e', '--out', str(tmp_path / 'docs'), '--bins', '3'])
    assert (tmp_path / 'docs' / 'learning_e2e.png').stat().st_size > 1000
    with open(tmp_path / 'docs' / 'learning_e2e.csv') as f:
        rows = list(csv.DictReader(f))
    returns = tracking.client().get_metric_history(run_id, 'agent/return')
    env_rows = [r for r in rows if r['x_kind'] == 'env_steps']
    assert env_rows and sum(int(r['episodes']) for r in env_rows) == len(returns)
    assert float(env_rows[-1]['x']) <= max(m.step for m in returns)
    wall_rows = [r for r in rows if r['x_kind'] == 'wall_minutes']
    assert sum(int(r['episodes']) for r in wall_rows) == len(returns)
    assert 0 < float(wall_rows[-1]['x']) < 10  # minutes since the first episode of this short run

    # an earlier curve from its CSV alone, drawn and written beside the run's
    earlier = tmp_path / 'earlier.csv'
    earlier.write_text('run,x_kind,x,mean,episodes\nearlier,wall_minutes,1.5,4.25,30\n')
    plot_learning.main(['--run', 'e2e', '--csv', str(earlier), '--name', 'both', '--out', str(tmp_path / 'docs'), '--bins', '3'])
    with open(tmp_path / 'docs' / 'learning_both.csv') as f:
        both = list(csv.DictReader(f))
    assert {r['run'] for r in both} == {'e2e', 'earlier'} and len(both) == len(rows) + 1


def test_killed_learner_stops_the_rate_limited_job_and_resumes_from_its_checkpoint(mlflow_local, tmp_path):
    log_path = tmp_path / 'launch.log'
    with open(log_path, 'w') as log_file:
        proc = subprocess.Popen(LAUNCH + ['--n_steps', '100000', '--save_interval', '5', '--limit_step_ratio', '5'],
                                cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300  # generous: the three processes start slowly on a busy 2-core machine
        step, loaded = None, False
        while time.time() < deadline and not (step and loaded):  # a checkpoint that the generator plays
            time.sleep(2)
            runs = tracking.client().search_runs(
                [e.experiment_id for e in tracking.client().search_experiments()])
            if runs:
                step = _checkpoint_step(runs[0].info.run_id, tmp_path)
            loaded = 'loaded the checkpoint of learner step' in log_path.read_text()
        assert step and loaded, 'no checkpoint appeared and was played within 300 s'
        learner_pid = int(re.search(r'Started learner \(pid (\d+)', log_path.read_text())[1])
        os.kill(learner_pid, signal.SIGKILL)
        assert proc.wait(timeout=120) == 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log = log_path.read_text()
    assert 'did not stop' not in log  # the generator paused by the rate limit stopped when asked
    stored = int(re.search(r'Worker 0 stored (\d+) steps', log)[1])
    policy_step = max(map(int, re.findall(r'loaded the checkpoint of learner step (\d+)', log)))
    # at most 5 stored steps per learner step after the 300-step prefill, plus the episode that crossed the limit
    assert stored <= max(300, 5 * policy_step) + 200, (stored, policy_step)
    run_id = _only_run().info.run_id
    step = _checkpoint_step(run_id, tmp_path)
    out = _launch(['--resume_id', run_id, '--n_steps', str(step + 10)], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f'at step {step}' in out.stderr
    assert _checkpoint_step(run_id, tmp_path) == step + 10
    logged = [m.step for m in tracking.client().get_metric_history(run_id, 'train/loss_model')]
    assert max(logged) > step


def test_learning_run_trains_then_draws_its_curve(mlflow_local, tmp_path):
    code = learning_run.main(['--configs', 'defaults', 'minatar', 'debug', '--n_steps', '20', '--prefill', '300',
                              '--run_name', 'curve', '--out', str(tmp_path / 'docs')])
    assert code == 0
    run = _only_run()
    assert run.info.status == 'FINISHED' and run.data.params['limit_step_ratio'] == '20.0'
    assert (tmp_path / 'docs' / 'learning_curve.png').exists()
    assert (tmp_path / 'docs' / 'learning_curve.csv').read_text().startswith('run,x_kind,x,mean,episodes')
    # 20 steps are enough to see the world model learn on held-out files: measured 51.9 -> 48.0
    evals = tracking.client().get_metric_history(run.info.run_id, 'eval/loss_model')
    assert [m.step for m in evals] == [0, 20] and evals[-1].value < 0.98 * evals[0].value


def test_vector_observation_run_trains_on_cartpole(mlflow_local, tmp_path):
    out = subprocess.run([sys.executable, str(PROJECT_ROOT / 'launch.py'), '--configs', 'defaults', 'vector', 'debug',
                          '--n_steps', '20', '--generator_prefill_steps', '300'],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    run = _only_run()
    assert run.data.params['env_id'] == 'CartPole-v1' and run.info.status == 'FINISHED'
    assert _checkpoint_step(run.info.run_id, tmp_path) == 20
    assert 'train/loss_vecobs' in run.data.metrics and 'train/loss_image' not in run.data.metrics
    from pydreamer.data import EpisodeIndex
    index = EpisodeIndex(run.info.run_id, 'episodes', 10**6, 0)
    index.refresh(force=True)
    episode = index.load(index.files[0][0])
    assert episode['vecobs'].shape[1:] == (4,) and 'image' not in episode
    index.close()


def test_an_image_preset_on_a_vector_environment_is_one_sentence(mlflow_local, tmp_path):
    out = _launch(['--env_id', 'CartPole-v1', '--action_dim', '2'], tmp_path)
    assert out.returncode == 2
    assert 'CartPole-v1 gives a vector observation of size 4' in out.stderr and '--configs defaults vector' in out.stderr
