"""Torch threads per stage process: a learner and its generators must not oversubscribe the cores."""
import os
import subprocess
import sys

import pytest

from pydreamer.config import PROJECT_ROOT
from pydreamer.launching.processes import Child, assign_threads, resolve_target


def _children(n_generators, learner=True):
    procs = [Child(f'generator-{w}', 'builtins:print') for w in range(n_generators)]
    return procs + ([Child('learner', 'builtins:print', ends_job=True, trains=True)] if learner else [])


def test_launchers_leave_torch_and_plotting_to_their_children():
    # the launcher process lives as long as the job: without torch it takes ~190 MB instead of ~500
    code = ('import sys; import launch, launch_generator_multi_env, launch_wm_training, pydreamer.envs; '
            'print(sorted(m for m in ("torch", "matplotlib", "seaborn", "pandas") if m in sys.modules)); '
            'import matplotlib, pandas')  # hidden only while mlflow and minatar load: importable afterwards
    out = subprocess.run([sys.executable, '-c', code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '[]'
    assert resolve_target('pydreamer.generator:run').__module__ == 'pydreamer.generator'


@pytest.mark.parametrize('cores, generators, idle, expected', [
    (2, 1, False, [1, 1]),          # a busy generator keeps one core
    (2, 1, True, [1, 2]),           # a rate-limited generator mostly sleeps: the learner takes both
    (8, 2, False, [1, 1, 6]),
    (2, 0, False, [2]),             # world-model-only training
    (2, 4, False, [1, 1, 1, 1, 1]),  # more processes than cores: never zero threads
])
def test_learner_gets_the_cores_the_generators_leave(monkeypatch, cores, generators, idle, expected):
    monkeypatch.setattr(os, 'cpu_count', lambda: cores)
    procs = _children(generators)
    assign_threads(procs, others_mostly_idle=idle)
    assert [p.threads for p in procs] == expected


def test_data_only_runs_share_the_cores_and_a_configured_count_wins(monkeypatch):
    monkeypatch.setattr(os, 'cpu_count', lambda: 8)
    procs = _children(4, learner=False)
    assign_threads(procs)
    assert [p.threads for p in procs] == [2, 2, 2, 2]
    procs = _children(2)
    assign_threads(procs, configured=3)
    assert [p.threads for p in procs] == [3, 3, 3]
