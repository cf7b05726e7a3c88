"""Faults a run survives, on the real `debug` section: an unreadable latest.pt (the previous.pt kept
beside it takes over, said in one sentence), a non-finite loss (the update is skipped; the learner
stops after max_nonfinite_steps in a row), a full disk (one sentence, no partial file), and a
SIGKILLed job (the restart resumes from the run's checkpoint and every file reads back).
`bench/faults.py --kills 50` is the large version; this file reuses its checks.
"""
import contextlib
import errno
import itertools
import logging
import os
import random
import resource
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch

import launch
from bench import faults
from pydreamer import generator, learner, tracking
from pydreamer.artifacts import ArtifactFolder
from pydreamer.checkpoint import (RunCheckpoints, UnreadableCheckpoint, read_checkpoint, read_newest,
                                  save_checkpoint)
from pydreamer.config import build_config
from pydreamer.data import BatchStream, EpisodeIndex
from pydreamer.episodes import save_episode
from pydreamer.launching.cli import run_cli
from pydreamer.launching.processes import StageError, disk_full_error
from pydreamer.launching.stage import check_resume
from pydreamer.models.dreamer import Dreamer
from pydreamer.network_policy import NetworkPolicy
from pydreamer.preprocess import preprocess
from pydreamer.pretrained import load_pretrained
from pydreamer.train_step import init_optimizers, train_step

DEBUG = ['defaults', 'minatar', 'debug']


@pytest.fixture(scope='module')
def store(tmp_path_factory, mlflow_template_db):
    """A debug run with 400 stored steps and the checkpoints of learner steps 10 (latest.pt) and
    5 (previous.pt)."""
    work = tmp_path_factory.mktemp('faults')
    shutil.copyfile(mlflow_template_db, work / 'mlflow.db')
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv('MLFLOW_TRACKING_URI', f'sqlite:///{work}/mlflow.db')
        conf = build_config(DEBUG, {'n_steps': 10, 'save_interval': 5, 'log_interval': 4, 'eval_interval': 0,
                                    'policy_main': 'random'})
        run_id = tracking.start_run(conf, 'launch')
        generator.run(conf.replace(n_env_steps=400), run_id, 0)
        learner.run(conf, run_id)
        artifacts = Path(urlparse(tracking.client().get_run(run_id).info.artifact_uri).path)
        yield {'conf': conf, 'run_id': run_id, 'checkpoints': artifacts / 'checkpoints'}


@contextlib.contextmanager
def damaged(*paths: Path):
    """The files cut to their first 100 bytes, and restored afterwards."""
    saved = {p: p.read_bytes() for p in paths}
    for p in paths:
        p.write_bytes(saved[p][:100])
    try:
        yield
    finally:
        for p, data in saved.items():
            p.write_bytes(data)


def _step(path) -> int:
    return read_checkpoint(path)['step']


def test_read_newest_passes_over_a_bad_latest_to_the_previous_one(tmp_path):
    model = torch.nn.Linear(2, 2)
    folder = tmp_path / 'checkpoints'
    for step, name in ((5, 'previous.pt'), (10, 'latest.pt'), (7, 'other.pt')):
        save_checkpoint(folder / name, step, model, {'wm': torch.optim.AdamW(model.parameters())}, {})
    latest, previous, other = (str(folder / n) for n in ('latest.pt', 'previous.pt', 'other.pt'))

    def read():
        return read_newest(latest, lambda ref: Path(ref) if Path(ref).is_file() else None)

    assert read().ref == latest and read().passed_over is None and read().payload['step'] == 10
    with damaged(Path(latest)):
        loaded = read()
        assert (loaded.ref, loaded.payload['step']) == (previous, 5)
        assert loaded.passed_over.startswith(f'Checkpoint file {latest} could not be read (')
        with damaged(Path(previous)), pytest.raises(UnreadableCheckpoint) as both:
            read()
        assert f'{latest} could not be read (' in str(both.value) and f', and {previous} could not be read (' in str(both.value)
        Path(previous).rename(other + '.kept')
        with pytest.raises(UnreadableCheckpoint, match=f'could not be read .*, and there is no {previous} to fall back on'):
            read()
        Path(other + '.kept').rename(previous)
    Path(latest).unlink()
    assert read().passed_over == f'Checkpoint file {latest} does not exist'
    Path(previous).unlink()
    assert read() is None
    with damaged(Path(other)), pytest.raises(UnreadableCheckpoint):  # only a latest.pt has a previous one
        read_newest(other, lambda ref: Path(ref) if Path(ref).is_file() else None)


def test_a_resume_past_an_unreadable_latest_continues_from_previous_in_one_sentence(store, caplog):
    run_id, folder = store['run_id'], store['checkpoints']
    with damaged(folder / 'latest.pt'):
        with caplog.at_level(logging.WARNING):
            check_resume(store['conf'].replace(resume_id=run_id))  # the launcher's check lets it through quietly
            assert not caplog.records
            learner.run(store['conf'], run_id)  # resumes at step 5, saves step 10 again
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [f'Checkpoint file runs:/{run_id}/checkpoints/latest.pt could not be read ('
                            f'{warnings[0].split(" could not be read (")[1].split(");")[0]}); resuming run {run_id} '
                            f'from runs:/{run_id}/checkpoints/previous.pt at step 5.']
        assert 'pydreamer-' not in warnings[0]  # no temporary download path
        # the damaged file was never rotated into previous.pt: the learner keeps the one that read
        assert (_step(folder / 'latest.pt'), _step(folder / 'previous.pt')) == (10, 5)


def test_a_resume_with_no_readable_checkpoint_stops_with_one_sentence(store, capsys):
    run_id, folder = store['run_id'], store['checkpoints']
    with damaged(folder / 'latest.pt', folder / 'previous.pt'):
        code = run_cli(launch.main, 'launch', ['--configs', *DEBUG, '--resume_id', run_id])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error: ')]
    assert code == 2 and len(errors) == 1
    assert (f'error: Checkpoint file runs:/{run_id}/checkpoints/latest.pt could not be read (' in errors[0]
            and f', and runs:/{run_id}/checkpoints/previous.pt could not be read (' in errors[0]), errors
    assert tracking.client().get_run(run_id).info.status == 'RUNNING'  # as the fixture left it: not reopened


def test_fine_tuning_and_the_network_policy_also_fall_back_to_previous(store, caplog):
    run_id, folder = store['run_id'], store['checkpoints']
    conf = build_config([*DEBUG, 'finetune'], {'model_checkpoint': f'runs:/{run_id}/checkpoints/latest.pt',
                                               'env_id': 'MinAtar/SpaceInvaders-v0'})
    with damaged(folder / 'latest.pt'), caplog.at_level(logging.WARNING):
        summary = load_pretrained(conf, Dreamer(conf))
        policy = NetworkPolicy(store['conf'], run_id, 6, seed=0)
        policy._maybe_reload(force=True)  # once: wait_for_checkpoint() would wait for ever if it failed
        assert policy.loaded_step == 5
    assert summary['pretrained_checkpoint'] == f'runs:/{run_id}/checkpoints/previous.pt'
    assert summary['pretrained_step'] == '5'
    assert [r.getMessage().endswith(f'; fine-tuning from runs:/{run_id}/checkpoints/previous.pt instead.')
            for r in caplog.records if r.name == 'pydreamer.pretrained'] == [True]


def test_a_step_with_a_nonfinite_loss_updates_nothing(store):
    conf = store['conf']
    index = EpisodeIndex(store['run_id'], 'episodes', 10 ** 6, 0)
    obs = preprocess(BatchStream(index, conf.batch_size, conf.batch_length, 0, True, seed=0).next(), conf,
                     torch.device('cpu'))
    index.close()
    model = Dreamer(conf)
    optimizers = init_optimizers(model, conf)
    train_step(model, obs, model.init_state(conf.batch_size), optimizers)  # the optimizers now hold moments

    def snapshot():  # every parameter and every optimizer moment
        return [p.detach().clone() for p in model.parameters()] + \
               [t.clone() for opt in optimizers.values() for state in opt.state.values() for t in state.values()]

    before = snapshot()
    _, metrics = train_step(model, {**obs, 'reward': obs['reward'] * float('nan')}, model.init_state(conf.batch_size),
                                  optimizers)
    assert metrics['nonfinite_skipped'] == 1
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot()))
    _, metrics = train_step(model, obs, model.init_state(conf.batch_size), optimizers)
    assert metrics['nonfinite_skipped'] == 0
    assert not all(torch.equal(a, b) for a, b in zip(before, snapshot()))


def test_the_learner_stops_after_max_nonfinite_steps_in_a_row(store, monkeypatch):
    calls = itertools.count(1)

    def poisoned(batch, conf, device):  # the rewards of learner step 7 on are NaN
        obs = preprocess(batch, conf, device)
        return {**obs, 'reward': obs['reward'] * float('nan')} if next(calls) >= 7 else obs

    monkeypatch.setattr(learner, 'preprocess', poisoned)
    conf = store['conf'].replace(n_steps=50, max_nonfinite_steps=3)
    run_id = tracking.start_run(conf, 'launch')
    with pytest.raises(StageError) as stop:
        learner.run(conf, run_id, learner.LearnerSpec(data_run_id=store['run_id']))
    assert str(stop.value).startswith('The loss or a gradient was not finite for 3 learner steps in a row '
                                      '(up to step 9, max_nonfinite_steps 3), so the learner stops; its newest '
                                      'checkpoint is of step 5')
    history = tracking.client().get_metric_history(run_id, 'train/nonfinite_skipped')
    assert [(m.step, m.value) for m in history] == [(4, 0.0), (8, 0.5)]  # steps 7 and 8 of 5-8 skipped
    loss = tracking.client().get_metric_history(run_id, 'train/loss_model')
    assert all(np.isfinite(m.value) for m in loss) and [m.step for m in loss] == [4, 8]
    assert _step(RunCheckpoints(run_id).download(str(Path.cwd() / 'check'))) == 5  # nothing saved while skipping


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Writes past `nbytes` of any file fail with EFBIG, as on a full disk (Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_full_disk_keeps_no_partial_file_and_is_one_sentence_naming_the_file(mlflow_local, tmp_path):
    rng = np.random.default_rng(0)
    episode = {'image': rng.integers(0, 255, (20, 64, 64, 3), np.uint8), 'action': np.eye(6, dtype=np.float32)[[0] * 20],
               'reward': np.zeros(20, np.float32), 'terminal': np.zeros(20, bool), 'reset': np.eye(1, 20, dtype=bool)[0]}
    big = tmp_path / 'ep000000_000000-0-r0-0020.npz'
    save_episode(big, episode)  # 245 kB of noise: well over the limit
    model = torch.nn.Linear(300, 300)
    run_id = tracking.start_run(build_config(DEBUG), 'launch')
    uploaded = Path(urlparse(tracking.client().get_run(run_id).info.artifact_uri).path) / 'episodes' / '0' / big.name
    writes = {tmp_path / 'out' / big.name: lambda path: save_episode(path, episode),
              tmp_path / 'ckpt' / 'latest.pt': lambda path: save_checkpoint(path, 1, model, {}, {}),
              uploaded: lambda path: ArtifactFolder(run_id, 'episodes/0').upload(big)}
    errors = {}
    for path, write in writes.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_size_limit(64 * 1024), pytest.raises(OSError) as full:
            write(path)
        errors[path] = full.value
    for path, e in errors.items():
        assert e.errno == errno.EFBIG and e.filename == str(path)
        assert not list(path.parent.iterdir())  # neither the file nor its temporary
    assert str(disk_full_error(errors[uploaded])) == (f'File too large while writing {uploaded}; nothing '
                                                      'half-written was kept: free space there, then resume the '
                                                      'run with --resume_id.')
    assert disk_full_error(FileNotFoundError(errno.ENOENT, 'No such file')) is None


def test_a_killed_job_resumes_at_its_checkpoint_and_a_diverging_restart_stops_in_one_sentence(store, tmp_path):
    """Two launch.py restarts of the store's run, each with a fault: the first finds latest.pt
    damaged and is SIGKILLed (its whole process group) at a random moment after its next save;
    the second resumes at the checkpoint the kill left, and its loss overflows (kl_weight 1e300)."""
    run_id, folder = store['run_id'], store['checkpoints']
    report = faults.Report()
    with damaged(folder / 'latest.pt'):
        job = faults.Job([*faults.ENDLESS, '--resume_id', run_id], Path.cwd(), dict(os.environ), tmp_path / 'run.log')
        deadline = time.time() + 300  # the processes start slowly on a busy 2-core machine
        while time.time() < deadline and job.proc.poll() is None and _step(folder / 'previous.pt') < 10:
            time.sleep(0.5)  # until the first save after the resume has rotated previous.pt
    assert _step(folder / 'previous.pt') >= 10, job.text()[-3000:]
    time.sleep(random.Random(0).uniform(0, 2))
    assert job.kill('launcher group') == 'launcher group' and job.wait(60) == -9
    assert faults.resumed_step(job.text()) == 5
    warnings = [line for line in job.text().splitlines() if 'WARNING' in line]
    assert len(warnings) == 1 and f'runs:/{run_id}/checkpoints/latest.pt could not be read' in warnings[0], warnings
    step = faults.checkpoint_step(run_id, report, tmp_path / 'ckpt')
    assert _step(folder / 'previous.pt') == step - 5

    restart = faults.Job([*faults.ENDLESS, '--resume_id', run_id, '--kl_weight', '1e300', '--max_nonfinite_steps', '3'],
                         Path.cwd(), dict(os.environ), tmp_path / 'restart.log')
    code, text = restart.wait(300), restart.text()
    errors = [line for line in text.splitlines() if line.startswith('error: ')]
    assert code == 2 and len(errors) == 1 and 'Traceback' not in text, text[-3000:]
    assert errors[0].startswith(f'error: The loss or a gradient was not finite for 3 learner steps in a row (up to '
                                f'step {step + 3}, max_nonfinite_steps 3), so the learner stops; its newest '
                                f'checkpoint is of step {step}')
    assert faults.resumed_step(text) == step
    assert faults.checkpoint_step(run_id, report, tmp_path / 'ckpt') == step  # nothing saved while diverging
    faults.check_run(run_id, tmp_path / 'check', report)
    assert not report.violations and report.files > 3 and report.checkpoints == 2, report
