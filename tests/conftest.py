"""Shared fixtures: an isolated local mlflow store per test, and one real mlflow server per session.

Tests never touch the repository's working directory: `mlflow_local` and `mlflow_remote` chdir
into the test's tmp_path and point MLFLOW_TRACKING_URI at their store, so subprocesses started by
a test inherit the same store. mlflow is imported lazily so tests that do not use it stay fast.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

SERVER_START_TIMEOUT = 90  # seconds; the server starts in ~4 s on an idle machine

# The tiers, each runnable alone (`pytest -m unit`, `-m learning`, `-m pipeline`): unit tests run
# modules and functions in this process; learning tests assert that returns rise; pipeline tests
# run the launchers and scripts, mostly as real processes. A module not named here is unit.
TIERS = {
    'learning': ('test_learning',),
    'pipeline': ('test_bad_input', 'test_evaluate', 'test_faults', 'test_generator', 'test_help', 'test_launch',
                 'test_multi_env', 'test_pipeline', 'test_probe_latents', 'test_processes', 'test_transfer'),
}


def pytest_collection_modifyitems(items):
    for item in items:
        module = item.module.__name__.rpartition('.')[2]
        item.add_marker(next((tier for tier, modules in TIERS.items() if module in modules), 'unit'))


@pytest.fixture(scope='session')
def mlflow_template_db(tmp_path_factory) -> Path:
    """An empty, fully migrated sqlite tracking database. Creating one costs ~6 s of migrations,
    copying it a millisecond, so every `mlflow_local` store starts from a copy."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp('mlflow_template') / 'mlflow.db'
    MlflowClient(f'sqlite:///{db}').search_experiments()  # runs the migrations
    # mlflow stores the default experiment with an absolute artifact location (this folder).
    # Without the row, mlflow recreates it on first use of each copy, under that test's cwd.
    with sqlite3.connect(db) as con:
        con.execute('DELETE FROM experiments WHERE experiment_id = 0')
    con.close()
    return db


@pytest.fixture
def mlflow_local(tmp_path, monkeypatch, mlflow_template_db) -> str:
    """A fresh local store (tmp_path/mlflow.db, artifacts under tmp_path/mlruns) as the tracking
    URI, with tmp_path as the working directory. Yields the tracking URI."""
    shutil.copyfile(mlflow_template_db, tmp_path / 'mlflow.db')
    monkeypatch.chdir(tmp_path)
    uri = f'sqlite:///{tmp_path}/mlflow.db'
    monkeypatch.setenv('MLFLOW_TRACKING_URI', uri)
    yield uri
    _end_active_run()


@pytest.fixture(scope='session')
def mlflow_server_root(tmp_path_factory) -> Path:
    """The folder of the session's mlflow server: its database, and its artifacts under `artifacts/`."""
    return tmp_path_factory.mktemp('mlflow_server')


@pytest.fixture(scope='session')
def mlflow_server(mlflow_server_root) -> str:
    """A real `mlflow server` (light mode, one worker, proxied artifacts) on a free local port.
    Yields its URI; the server and its children are terminated at the end of the session."""
    root = mlflow_server_root
    port = _free_port()
    uri = f'http://127.0.0.1:{port}'
    mlflow_exe = Path(sys.executable).parent / 'mlflow'
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION='false')
    env.pop('MLFLOW_TRACKING_URI', None)
    log_path = root / 'server.log'
    with open(log_path, 'wb') as log:
        # A new session makes the server's uvicorn child part of a process group we can end.
        proc = subprocess.Popen(
            [str(mlflow_exe), 'server', '--workers', '1',
             '--backend-store-uri', f'sqlite:///{root}/mlflow.db',
             '--artifacts-destination', str(root / 'artifacts'),
             '--host', '127.0.0.1', '--port', str(port)],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(uri, proc, log_path)
        yield uri
    finally:
        _stop(proc)


@pytest.fixture
def mlflow_remote(mlflow_server, tmp_path, monkeypatch) -> str:
    """The session's mlflow server as the tracking URI, with tmp_path as the working directory.
    Yields the tracking URI."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('MLFLOW_TRACKING_URI', mlflow_server)
    yield mlflow_server
    _end_active_run()


def _end_active_run() -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.end_run()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _wait_healthy(uri: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f'mlflow server exited with code {proc.returncode}: {_tail(log_path)}')
        try:
            with urllib.request.urlopen(f'{uri}/health', timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise RuntimeError(
        f'mlflow server at {uri} was not healthy after {SERVER_START_TIMEOUT} s: {_tail(log_path)}')


def _tail(log_path: Path) -> str:
    return log_path.read_text(errors='replace')[-2000:]


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
