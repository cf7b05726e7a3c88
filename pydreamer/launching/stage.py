"""The common shape of a stage launcher: check the config, open an mlflow run, start the stage's
processes, wait, and close the run with the outcome."""
from __future__ import annotations

import logging
import re
import tempfile
from typing import Callable, Mapping

from pydreamer.checkpoint import RunCheckpoints
from pydreamer.config import Config, ConfigError
from pydreamer.envs import env_id_list, game_name, make_env
from pydreamer.launching.processes import USER_ERROR_EXIT, Child, assign_threads, run_children
from pydreamer.policies import check_policy_source
from pydreamer.tracking import end_run, get_run, setup_tracking, start_run

log = logging.getLogger(__name__)

# Every process a launcher starts, by what it is: the stage function that it runs
TARGETS = {
    'generator': 'pydreamer.generator:run',              # launch.py, launch_finetuning.py
    'multi_env_generator': 'generator_multi_env:run',    # launch_generator_multi_env.py
    'learner': 'pydreamer.learner:run',                  # launch.py
    'wm_learner': 'train_wm_only:run',                   # launch_wm_training.py
    'finetune_learner': 'train_finetune:run',            # launch_finetuning.py
}


def generators(conf: Config, run_id: str, kind: str = 'generator') -> list[Child]:
    return [Child(f'generator-{w}', TARGETS[kind], (conf, run_id, w)) for w in range(conf.generator_workers)]


def learner(conf: Config, run_id: str, kind: str = 'learner') -> Child:
    """The process whose end ends the job."""
    return Child('learner', TARGETS[kind], (conf, run_id), ends_job=True, trains=True)


def check_generator_config(conf: Config) -> None:
    """Fail before any process starts when an env id is unknown, disagrees with the preset
    (action_dim, env_action_repeat, the observation), or a data policy cannot be built for it
    (e.g. a missing checkpoint folder)."""
    if conf.generator_workers < 1:
        # a learner would wait for data for ever
        raise ConfigError('Config key generator_workers is 0, but this stage generates its data; expected at least 1.')
    for env_id in env_id_list(conf.env_id):
        env = make_env(env_id, action_repeat=conf.env_action_repeat)
        n_actions = env.action_dim
        obs = env.reset()
        env.close()
        if conf.action_dim and conf.action_dim != n_actions:
            raise ConfigError(f'Config key action_dim is {conf.action_dim} but {env_id} has {n_actions} actions.')
        check_observation(conf, env_id, obs)
        for name in {conf.generator_prefill_policy, conf.policy_main} - {'network'}:
            try:
                check_policy_source(name, conf, env_id, n_actions)
            except (ValueError, OSError) as e:
                raise ConfigError(f'Policy {name!r} for {env_id} cannot be used: {e}') from None


def check_observation(conf: Config, env_id: str, obs: dict) -> None:
    """The model the config builds must read the observation the environment gives."""
    has_image = conf.image_encoder != 'none'
    if 'vecobs' in obs:
        size = obs['vecobs'].shape[0]
        if has_image or conf.vecobs_size != size:
            raise ConfigError(f'{env_id} gives a vector observation of size {size}, but the config has '
                              f'image_encoder {conf.image_encoder} and vecobs_size {conf.vecobs_size}; use '
                              f'--configs defaults vector --vecobs_size {size} --action_dim <n>.')
    if 'image' in obs:
        image = obs['image']
        categorical = image.ndim == 2  # MinAtar category indices; other images are (H, W, C)
        if (not has_image or conf.image_size != image.shape[0] or conf.image_categorical != categorical
                or not categorical and conf.image_channels != image.shape[2]):
            raise ConfigError(f'{env_id} gives {"x".join(map(str, image.shape))} {"categorical " if categorical else ""}'
                              f'images, but the config has image_encoder {conf.image_encoder}, '
                              f'image_size {conf.image_size}, image_channels {conf.image_channels} and '
                              f'image_categorical {str(conf.image_categorical).lower()}; use the preset for it '
                              f'(minatar for MinAtar ids, atari for Atari ids, with --image_channels 1 for AtariGray).')


def check_learner_config(conf: Config) -> None:
    """The cross-key rules of the model that the learner would otherwise find after the prefill."""
    if not re.fullmatch(r'auto|cpu|cuda(:\d+)?', conf.device):
        raise ConfigError(f'Config key device is {conf.device!r}; expected auto, cpu, cuda or cuda:<index>.')
    if conf.image_loss == 'categorical' and not conf.image_categorical:
        raise ConfigError('Config key image_loss is categorical, which needs categorical images '
                          '(image_categorical true, as in the minatar preset); expected mse.')
    if conf.deter_dim % conf.gru_layers:
        raise ConfigError(f'Config key deter_dim is {conf.deter_dim}; expected a multiple of gru_layers '
                          f'({conf.gru_layers}), which share it evenly.')
    if conf.image_encoder == 'none' and not conf.vecobs_size:
        raise ConfigError('Config keys image_encoder none and vecobs_size 0 leave the world model no '
                          'observation; expected an image encoder or a vector observation size.')


def check_resume(conf: Config) -> None:
    """A run to resume must exist, and its checkpoint, if it has one, must read (latest.pt, or else
    previous.pt, as the learner will say) and fit this config; checked before the run is reopened,
    so that a refused resume changes nothing in it."""
    get_run(conf.resume_id)
    with tempfile.TemporaryDirectory(prefix='pydreamer-check-') as tmp:
        loaded = RunCheckpoints(conf.resume_id).read(tmp, header_only=True)
    if loaded is None:
        return
    from pydreamer.pretrained import check_compatible
    check_compatible(loaded.payload['config'], conf, 'all', loaded.ref)


def run_stage(conf: Config, stage: str, children: Callable[[str], list[Child]],
              tags: Mapping[str, str] | None = None) -> int:
    """Run the stage's processes inside a new (or resumed) mlflow run; returns the exit code.
    `tags` add to (or replace) the run's `stage`, `seed` and `game` (from env_id)."""
    uri = setup_tracking()
    if conf.resume_id:
        check_resume(conf)
    run_id = start_run(conf, stage, {'game': game_name(conf.env_id), **(tags or {})})
    log.info('Tracking store: %s', uri)
    procs = children(run_id)
    # limit_step_ratio pauses only network-policy generators
    rate_limited = conf.limit_step_ratio > 0 and conf.policy_main == 'network'
    assign_threads(procs, conf.torch_threads, others_mostly_idle=rate_limited)
    code = run_children(procs)
    end_run(run_id, 'FINISHED' if code == 0 else 'FAILED' if code in (1, USER_ERROR_EXIT) else 'KILLED')
    log.info('Run %s ended (exit code %d).', run_id, code)
    return code
