"""experiments/transfer.py's bookkeeping on real stage runs: one parent run, children named by
what differs, finished stages reused and interrupted ones resumed."""
import pytest

from experiments import transfer
from pydreamer import tracking
from pydreamer.checkpoint import RunCheckpoints, read_checkpoint

DEBUG_RUN = ['--configs', 'defaults', 'minatar', 'debug', '--generator_prefill_steps', '300',
             '--save_interval', '5', '--env_id', 'MinAtar/Breakout-v0']


def _runs(arm):
    c = tracking.client()
    return c.search_runs([e.experiment_id for e in c.search_experiments()],
                         f"tags.transfer = 't' and tags.arm = '{arm}'")


def test_stages_are_children_reused_when_finished_and_resumed_when_interrupted(mlflow_local, tmp_path):
    experiment = transfer.Experiment('t')
    first = experiment.stage('launch.py', 'scratch', [*DEBUG_RUN, '--n_steps', '10'], seed=1)
    run = tracking.client().get_run(first)
    assert run.info.run_name == 'scratch-s1-t' and run.info.status == 'FINISHED'
    assert run.data.tags['mlflow.parentRunId'] == experiment.parent and run.data.tags['seed'] == '1'

    assert experiment.stage('launch.py', 'scratch', [*DEBUG_RUN, '--n_steps', '10'], seed=1) == first
    assert len(_runs('scratch')) == 1

    tracking.client().set_terminated(first, 'KILLED')            # as after an interruption
    again = transfer.Experiment('t')                              # the same command, run again
    assert again.parent == experiment.parent
    assert again.stage('launch.py', 'scratch', [*DEBUG_RUN, '--n_steps', '20'], seed=1) == first
    assert len(_runs('scratch')) == 1
    saved = read_checkpoint(RunCheckpoints(first).download(str(tmp_path / 'ckpt')))
    assert saved['step'] == 20

    # the final actor plays in a child run of its own; its mean return becomes the arm's final/return
    again.final_return(first, 'scratch', 1, 'MinAtar/Breakout-v0', episodes=2)
    (evaluation,) = _runs('evaluate_scratch')
    assert evaluation.data.tags['mlflow.parentRunId'] == experiment.parent
    assert evaluation.data.tags['source_run_id'] == first and evaluation.info.run_name == 'evaluate_scratch-s1-t'
    (final,) = tracking.client().get_metric_history(first, 'final/return')
    assert final.step == 20 and final.value == evaluation.data.metrics['eval/return']
    assert '`final/return`' in tracking.client().get_run(first).data.tags['mlflow.note.content']
    again.final_return(first, 'scratch', 1, 'MinAtar/Breakout-v0', episodes=2)  # once per arm run
    assert len(_runs('evaluate_scratch')) == 1


@pytest.mark.parametrize('name,game', [('Breakout', 'Breakout'), ('space_invaders', 'SpaceInvaders'),
                                       ('MinAtar/SpaceInvaders-v0', 'SpaceInvaders'), ('seaquest', 'Seaquest')])
def test_target_names(name, game):
    assert transfer.minatar_game(name) == game


def test_an_unknown_target_is_one_sentence():
    with pytest.raises(SystemExit, match="--target 'Pacman' is not a MinAtar game"):
        transfer.minatar_game('Pacman')


def test_folder_names_match_the_dqn_stage():
    from dqn.train_agents import game_module
    for game in ('Asterix', 'Breakout', 'Freeway', 'Seaquest', 'SpaceInvaders'):
        assert transfer.folder_name(game) == game_module(game)
