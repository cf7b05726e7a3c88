"""Returns that rise: a real Dreamer run on a real environment, judged by its episodes' returns."""
import subprocess
import sys

import numpy as np

from experiments.curves import episodes
from pydreamer import tracking
from pydreamer.config import PROJECT_ROOT

# The `vector` preset narrowed so that 500 learner steps fit the test budget (one torch thread each:
# the tiny model gains nothing from more); collection is rate-limited to 10 stored steps per learner
# step and the actor takes over at learner step 100. Measured: returns of 100-200 from ~step 300 on.
CARTPOLE = ['--configs', 'defaults', 'vector', '--n_steps', '500', '--generator_prefill_steps', '2000',
            '--limit_step_ratio', '10', '--policy_start_step', '100', '--policy_reload_interval', '2',
            '--save_interval', '50', '--log_interval', '25', '--eval_interval', '1000',
            '--deter_dim', '64', '--hidden_dim', '64', '--stoch_dim', '16', '--stoch_discrete', '16',
            '--mlp_dim', '64', '--batch_size', '16', '--batch_length', '32', '--imag_starts', '128',
            '--torch_threads', '1']
RANDOM_CARTPOLE = 22.0  # mean return of the uniform policy on CartPole-v1


def test_dreamer_learns_cartpole_well_above_random(mlflow_local, tmp_path):
    out = subprocess.run([sys.executable, str(PROJECT_ROOT / 'launch.py'), *CARTPOLE], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    c = tracking.client()
    (run,) = c.search_runs([c.get_experiment_by_name('pydreamer').experiment_id])
    rows = episodes(run.info.run_id)  # (learner step, env steps, return, minutes)
    prefill, late = rows[rows[:, 0] == 0, 2], rows[rows[:, 0] >= 350, 2]
    assert abs(prefill.mean() - RANDOM_CARTPOLE) < 5, prefill.mean()
    assert len(late) >= 3 and late.mean() > 3 * RANDOM_CARTPOLE, (late.mean(), np.round(rows, 1).tolist())
