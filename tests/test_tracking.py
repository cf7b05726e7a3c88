"""Runs that say what they are, in an experiment that opens on its runs: names, tags and
descriptions through mlflow's API, on a real local store."""
from pydreamer import tracking
from pydreamer.config import build_config


def _conf(**changes):
    return build_config(['defaults', 'minatar', 'debug']).replace(**changes)


def test_new_and_existing_experiments_get_the_training_view_tag(mlflow_local):
    c = tracking.client()
    made = tracking.experiment_id('fresh')
    assert c.get_experiment(made).tags['mlflow.experimentKind'] == 'custom_model_development'
    old = c.create_experiment('older')  # as made by an earlier version
    assert 'mlflow.experimentKind' not in c.get_experiment(old).tags
    tracking.start_run(_conf(experiment='older'), 'launch')
    assert c.get_experiment(old).tags['mlflow.experimentKind'] == 'custom_model_development'


def test_runs_are_named_and_tagged_by_what_differs(mlflow_local):
    c = tracking.client()
    run = c.get_run(tracking.start_run(_conf(seed=3), 'launch', {'arm': 'scratch', 'game': 'Breakout'}))
    assert run.info.run_name == 'scratch-s3-Breakout'
    assert {k: run.data.tags[k] for k in ('stage', 'arm', 'game', 'seed')} == \
        {'stage': 'launch', 'arm': 'scratch', 'game': 'Breakout', 'seed': '3'}
    several = c.get_run(tracking.start_run(_conf(), 'generator_multi_env',
                                           {'arm': 'dataset', 'game': 'Asterix,Breakout,Freeway'}))
    assert several.info.run_name == 'dataset-s0-3games'
    chosen = c.get_run(tracking.start_run(_conf(run_name='mine', run_tags={'arm': 'finetune', 'seed': 7}), 'launch',
                                          {'arm': 'scratch', 'game': 'Breakout'}))
    assert chosen.info.run_name == 'mine' and chosen.data.tags['arm'] == 'finetune' and chosen.data.tags['seed'] == '7'


def test_a_finished_run_describes_itself_with_its_headline_metrics(mlflow_local):
    run_id = tracking.start_run(_conf(), 'launch', {'arm': 'scratch', 'game': 'Breakout'})
    tracking.MetricsLogger(run_id).log({'agent/return': 2.5, 'train/loss_model': 7.25, 'train/fps': 3.0}, 10)
    tracking.end_run(run_id, 'FINISHED')
    run = tracking.client().get_run(run_id)
    note = run.data.tags['mlflow.note.content']
    assert note.startswith('stage launch, arm scratch, game Breakout, seed 0: finished.')
    assert '`agent/return`: 2.5' in note and '`train/loss_model`: 7.25' in note and 'train/fps' not in note
    assert run.info.status == 'FINISHED'
