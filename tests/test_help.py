"""`--help` and `-h` on every launcher and stage script: what it does, how to call it, and the
config keys it reads with their values and their comments from config/defaults.yaml."""
import subprocess
import sys

import pytest

import launch
import launch_finetuning
import launch_generator_multi_env
import launch_wm_training
from pydreamer.config import PROJECT_ROOT, key_docs
from pydreamer.launching.cli import run_cli

LAUNCHERS = {'launch': launch, 'launch_finetuning': launch_finetuning,
             'launch_generator_multi_env': launch_generator_multi_env, 'launch_wm_training': launch_wm_training}
COMMENTS = {doc.key: doc.comment for doc in key_docs()}


def _help(name, argv, capsys):
    module = LAUNCHERS[name]
    assert run_cli(module.main, module.STAGE, argv) == 0
    out = capsys.readouterr()
    assert out.err == ''
    return out.out


@pytest.mark.parametrize('name', LAUNCHERS)
def test_every_launcher_describes_itself(name, capsys):
    text = _help(name, ['--help'], capsys)
    assert text.startswith(f'usage: python {name}.py [--configs <section> ...]')
    assert LAUNCHERS[name].__doc__.strip().splitlines()[0] in text
    assert f'--seed 0 {" " * 30}'[:10] in text and COMMENTS['seed'] in text
    assert 'minatar_cpu' in text  # the sections one can name


def test_each_stage_lists_the_keys_it_reads_with_the_values_of_its_sections(capsys):
    data = _help('launch_generator_multi_env', ['-h'], capsys)
    assert '--policy_main dqn ' in data and COMMENTS['policy_main'] in data
    assert '--adam_lr' not in data and '--imag_starts' not in data  # it trains nothing
    world_model = _help('launch_wm_training', ['--help'], capsys)
    assert '--mlflow_run_id' in world_model and COMMENTS['mlflow_run_id'] in world_model
    assert '--n_steps 100000 ' in world_model  # the wm_training section's value
    assert '--policy_main' not in world_model and '--entropy' not in world_model
    finetune = _help('launch_finetuning', ['--help'], capsys)
    assert '--model_checkpoint' in finetune and '--freeze_rssm false' in finetune and '--entropy 0.001' in finetune


def test_help_shows_the_values_of_the_sections_and_options_given(capsys):
    plain = _help('launch', ['--help'], capsys)
    assert '--env_id (empty)' in plain
    chosen = _help('launch', ['--configs', 'defaults', 'minatar', 'minatar_cpu', '--seed', '4', '-h'], capsys)
    assert '--env_id MinAtar/Breakout-v0' in chosen and '--imag_starts 256' in chosen and '--seed 4' in chosen


@pytest.mark.parametrize('script,expected', [
    ('launch.py', 'Classic pydreamer run'),
    ('evaluate.py', '--checkpoint'),
    ('dqn/train_agents.py', '--checkpoint-steps'),
    ('experiments/transfer.py', '--target'),
])
def test_scripts_answer_help_from_the_command_line(script, expected):
    out = subprocess.run([sys.executable, str(PROJECT_ROOT / script), '-h'], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert expected in out.stdout and out.stderr == ''
