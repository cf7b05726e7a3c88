"""mlflow plumbing shared by every stage: the tracking URI, runs, config logging and metric batches.

Every process talks to mlflow through an explicit run id and `MlflowClient`, never through
mlflow's global "active run", so generators and learners in separate processes (or on separate
machines against a tracking server) log into the same run without coordinating.
"""
from __future__ import annotations

import logging
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import yaml

from pydreamer.config import Config, ConfigError
from pydreamer.lean_imports import hidden_modules

with hidden_modules('pandas', 'pyarrow', 'scipy'):  # loaded by mlflow for dataset and model features not used here
    import mlflow  # noqa: F401 -- other modules import mlflow from here, so that this comes first

log = logging.getLogger(__name__)

TRACKING_URI_ENV = 'MLFLOW_TRACKING_URI'
_PARAM_VALUE_LIMIT = 6000  # mlflow's limit on the length of a param value


class RunNotFoundError(ValueError):
    """An mlflow run id that the tracking store does not know."""


def setup_tracking() -> str:
    """Pin the tracking URI for this process and its children, and return it.

    Without MLFLOW_TRACKING_URI mlflow 3 picks `sqlite:///mlflow.db` relative to the working
    directory, but silently switches to the legacy file store when it finds an old
    `./mlruns/<n>/meta.yaml`. Writing the absolute sqlite URI into the environment removes that
    ambiguity and lets spawned processes inherit exactly the same store.
    """
    uri = os.environ.get(TRACKING_URI_ENV)
    if not uri:
        uri = f'sqlite:///{Path.cwd() / "mlflow.db"}'
        os.environ[TRACKING_URI_ENV] = uri
    return uri


def client():
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=setup_tracking())


def get_run(run_id: str):
    from mlflow.exceptions import MlflowException
    try:
        return client().get_run(run_id)
    except MlflowException as e:
        if 'RESOURCE_DOES_NOT_EXIST' in str(e.error_code) or 'not found' in str(e).lower():
            raise RunNotFoundError(f'mlflow run {run_id!r} does not exist in the tracking store '
                                   f'{setup_tracking()}.') from None
        raise


# mlflow reads this experiment tag to open the experiment on its runs rather than on GenAI traces
EXPERIMENT_KIND = ('mlflow.experimentKind', 'custom_model_development')
# the metrics a run's description lists, when it has them
HEADLINE_METRICS = ('final/return', 'eval/return', 'agent/return', 'eval/loss_model', 'eval/loss_image',
                    'train/loss_model', 'train/loss_image', 'train/loss_kl')


def experiment_id(name: str) -> str:
    """The id of experiment `name`, created if needed, tagged to open on its training runs."""
    c = client()
    experiment = c.get_experiment_by_name(name)
    if experiment is None:
        return c.create_experiment(name, tags=dict([EXPERIMENT_KIND]))
    if experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
        c.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
    return experiment.experiment_id


def parse_tags(text: str, option: str = '--run_tags') -> dict[str, str]:
    """Tags written on a command line as a YAML map (`{arm: dqn, seed: 1}`); '' is none."""
    try:
        tags = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError:
        tags = None
    if not isinstance(tags, dict):
        raise ConfigError(f'{option} {text!r} is not a YAML map; expected e.g. "{{arm: dqn, seed: 1}}".')
    return {str(k): str(v) for k, v in tags.items()}


def start_run(conf: Config, stage: str, tags: Mapping[str, str] | None = None) -> str:
    """Create a run for `stage` (or reopen `conf.resume_id`), log the config, and return its id.
    A new run is tagged `stage`, `seed`, then `tags` (e.g. `game`, `arm`), then the config's
    `run_tags`, and named `<arm>-s<seed>-<game>` (`<n>games` for several) unless `run_name` is set."""
    c = client()
    if conf.resume_id:
        run = get_run(conf.resume_id)
        run_id = run.info.run_id
        c.update_run(run_id, status='RUNNING')
        log.info('Resuming mlflow run %s (%s).', run_id, run.info.run_name)
    else:
        all_tags = {'stage': stage, 'seed': str(conf.seed), **(tags or {}),
                    **{str(k): str(v) for k, v in (conf.run_tags or {}).items()}}
        games = all_tags.get('game', '').split(',')
        game = games[0] if len(games) == 1 else f'{len(games)}games'
        name = conf.run_name or '-'.join(filter(None, (all_tags.get('arm', stage), f's{all_tags["seed"]}', game)))
        run = c.create_run(experiment_id(conf.experiment), run_name=name, tags=all_tags)
        run_id = run.info.run_id
        log_params(run_id, conf.to_dict())
        log.info('Started mlflow run %s (%s) in experiment %r.', run_id, run.info.run_name, conf.experiment)
    save_config_artifact(run_id, conf)
    return run_id


def end_run(run_id: str, status: str = 'FINISHED') -> None:
    client().set_terminated(run_id, status=status)
    describe_run(run_id)


def describe_run(run_id: str) -> None:
    """Write the run's description (shown above its tabs in the UI): what it is, how it ended, and
    the last values of its headline metrics, wherever mlflow's metric groups put them."""
    c = client()
    run = c.get_run(run_id)
    metrics, tags = run.data.metrics, run.data.tags
    shown = [key for key in HEADLINE_METRICS if key in metrics]
    shown += sorted(key for key in metrics if re.fullmatch(r'(agent|eval)/[^/]+/return', key))
    about = ', '.join(f'{key} {tags[key]}' for key in ('stage', 'arm', 'game', 'seed') if key in tags)
    lines = [f'{about}: {run.info.status.lower()}.', '']
    lines += [f'- `{key}`: {metrics[key]:.4g} (last value)' for key in shown] or ['No metrics yet.']
    c.set_tag(run_id, 'mlflow.note.content', '\n'.join(lines))


def log_params(run_id: str, values: Mapping[str, Any]) -> None:
    from mlflow.entities import Param
    params = [Param(key, _param_text(value)) for key, value in values.items()]
    for i in range(0, len(params), 100):
        client().log_batch(run_id, params=params[i:i + 100])


def save_config_artifact(run_id: str, conf: Config) -> None:
    """Save the resolved config as `config.yaml` (the newest config of a resumed run wins)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'config.yaml'
        path.write_text(yaml.safe_dump(conf.to_dict(), sort_keys=False))
        client().log_artifact(run_id, str(path))


def _param_text(value: Any) -> str:
    text = '' if value is None else str(value)
    return text if len(text) <= _PARAM_VALUE_LIMIT else text[:_PARAM_VALUE_LIMIT - 3] + '...'


class MetricsLogger:
    """Sends metrics to one run in batches, retrying briefly when sqlite is locked by another process."""

    def __init__(self, run_id: str, retries: int = 5):
        self.run_id = run_id
        self.retries = retries
        self._client = client()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.log_many([(metrics, step)])

    def log_many(self, entries: list[tuple[Mapping[str, float], int]]) -> None:
        """Send several (metrics, step) entries in as few requests as possible."""
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, int(step)) for metrics, step in entries
                 for key, value in metrics.items() if value is not None and math.isfinite(float(value))]
        for i in range(0, len(batch), 1000):
            self._send(batch[i:i + 1000])

    def _send(self, batch) -> None:
        from mlflow.exceptions import MlflowException
        for attempt in range(self.retries):
            try:
                self._client.log_batch(self.run_id, metrics=batch)
                return
            except MlflowException as e:
                if 'locked' not in str(e).lower() or attempt == self.retries - 1:
                    raise
                time.sleep(0.2 * 2 ** attempt)
