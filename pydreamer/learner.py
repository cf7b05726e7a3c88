"""Learner process: trains a Dreamer on the episodes of an mlflow run and saves checkpoints there.

One training step: next batch of B streams → preprocess → world-model (+ actor-critic) losses →
one optimizer step per role. The RSSM state at the end of a batch is the start state of the next
(each stream continues where it stopped), unless `keep_state` is off. Restarting on the same run
restores model, optimizers and step from `checkpoints/latest.pt` and continues.
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from pydreamer.averages import Averages, every
from pydreamer.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME, RunCheckpoints, restore, save_checkpoint
from pydreamer.config import Config
from pydreamer.data import BatchStream, EpisodeIndex
from pydreamer.dreams import DreamLogger, data_env_ids
from pydreamer.image_stats import ImageFloor, changed_pixels, object_pixels, pixel_accuracy
from pydreamer.launching.processes import StageError, stop_requested
from pydreamer.models.dreamer import Dreamer
from pydreamer.preprocess import preprocess
from pydreamer.tracking import MetricsLogger, client
from pydreamer.train_step import init_optimizers, train_step

log = logging.getLogger(__name__)


def resolve_device(setting: str) -> torch.device:
    if setting == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(setting)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise StageError(f'Config key device is {setting!r} but no CUDA device is available; expected auto or cpu.')
    return device


@dataclass
class LearnerSpec:
    """What differs between the stages that train a Dreamer.

    data_run_id: the run whose `episodes/` and `episodes_eval/` are trained on (default: own run).
    wm_only: train the world model alone (no imagination, no actor-critic).
    wm_steps: train the world model only for this many steps, then actor-critic alone (0 = always).
    freeze: parameter-name prefixes that are never trained (e.g. 'wm.rssm.').
    prepare: called once on a fresh model (not on resume), e.g. to load pretrained weights;
        returns tags to record.
    wait_for_data: keep waiting for generators; when False, too little data is an error.
    """
    data_run_id: str | None = None
    wm_only: bool = False
    wm_steps: int = 0
    freeze: tuple[str, ...] = ()
    prepare: Callable[[Dreamer], dict[str, str]] | None = None
    wait_for_data: bool = True


def run(conf: Config, run_id: str, spec: LearnerSpec | None = None) -> None:
    spec = spec or LearnerSpec()
    device = resolve_device(conf.device)
    data_run = spec.data_run_id or run_id
    torch.manual_seed(conf.seed)
    model = Dreamer(conf, wm_only=spec.wm_only).to(device)
    for name, param in model.named_parameters():
        if name.startswith(spec.freeze):
            param.requires_grad_(False)  # frozen parameters get no gradient, so AdamW never moves them
    optimizers = init_optimizers(model, conf)
    checkpoints = RunCheckpoints(run_id)
    metrics_logger = MetricsLogger(run_id)
    work = tempfile.TemporaryDirectory(prefix='pydreamer-learner-')
    step = _resume_or_prepare(model, optimizers, checkpoints, spec, run_id, work.name)
    if step >= conf.n_steps:
        log.info('Run already trained for %d of %d steps; nothing to do.', step, conf.n_steps)
        return
    log.info('Model: %s parameters on %s (%s).', f'{sum(p.numel() for p in model.parameters()):,}', device,
             'world model only' if spec.wm_only else 'world model + actor-critic')

    train_index = EpisodeIndex(data_run, 'episodes', conf.buffer_size, conf.listing_interval)
    eval_index = EpisodeIndex(data_run, 'episodes_eval', conf.buffer_size, conf.listing_interval)
    # This run's own generators store their prefill first; part of it goes to the eval split.
    own_prefill = conf.generator_prefill_steps if data_run == run_id else 0
    if not _wait_for_data(train_index, eval_index, conf.batch_size * conf.batch_length,
                          own_prefill, spec.wait_for_data):
        return
    batches = BatchStream(train_index, conf.batch_size, conf.batch_length, conf.reset_interval,
                          conf.allow_mid_reset, seed=conf.seed + step)
    if step == 0 and conf.eval_interval:  # eval_interval 0 = never, as upstream
        # before any update: for a pretrained model, its zero-shot losses on this run's data
        _evaluate(model, eval_index, conf, device, metrics_logger, step)
    dreams = DreamLogger(conf, run_id, data_env_ids(conf, data_run, run_id), work.name)
    state = model.init_state(conf.batch_size)
    floor, averages = ImageFloor(), Averages()
    since = (time.time(), step)  # for train/fps
    saved_step, nonfinite_in_row = step, 0
    bar = tqdm(total=conf.n_steps, initial=step, desc='learner', unit='step', mininterval=2.0)
    try:
        while step < conf.n_steps and not stop_requested():
            if data_run == run_id and train_index.total_steps >= conf.n_env_steps:
                log.info('The run holds n_env_steps=%d steps of data; stopping.', conf.n_env_steps)
                break
            with averages.timer('timer_data'):
                obs = preprocess(batches.next(), conf, device)
                if 'image' in obs:
                    floor.update(obs['image'])
            if not conf.keep_state:
                state = model.init_state(conf.batch_size)
            train_wm = not spec.wm_steps or step < spec.wm_steps
            train_ac = step >= conf.actor_warmup_steps
            with averages.timer('timer_train'):
                state, metrics = train_step(model, obs, state, optimizers, train_wm=train_wm, train_ac=train_ac)
            step += 1
            bar.update(1)
            nonfinite_in_row = nonfinite_in_row + 1 if metrics['nonfinite_skipped'] else 0
            if nonfinite_in_row:
                _check_nonfinite(nonfinite_in_row, step, saved_step, conf.max_nonfinite_steps)
                state = model.init_state(conf.batch_size)  # the carried state may be what is not finite
                metrics = {'nonfinite_skipped': 1.0}  # the others are not finite: kept out of the averages
            averages.add(metrics)
            if every(step, conf.log_interval):
                values = {**averages.pop('train/'), 'train/fps': (step - since[1]) / max(1e-9, time.time() - since[0]),
                          'data/steps': train_index.steps, 'data/total_steps': train_index.total_steps,
                          'data/files': len(train_index.files), 'train/wm_trained': float(train_wm),
                          'train/ac_trained': float(train_ac)}
                if floor.count:
                    values['train/loss_image_floor'] = floor.value(conf.image_loss)
                metrics_logger.log(values, step)
                bar.set_postfix(loss_model=f'{values.get("train/loss_model", float("nan")):.3f}')
                since = (time.time(), step)
            if every(step, conf.logbatch_interval) or step == 1:
                dreams.log(model, obs, step)
            if every(step, conf.eval_interval):
                _evaluate(model, eval_index, conf, device, metrics_logger, step)
            # while updates are skipped the model may be what diverged: the checkpoints stay as they are
            if every(step, conf.save_interval) and not nonfinite_in_row:
                _save(model, optimizers, conf, checkpoints, step, work.name)
                saved_step = step
    finally:
        bar.close()
        if step > saved_step and not nonfinite_in_row:  # not twice at one step: previous.pt would then equal latest.pt
            _save(model, optimizers, conf, checkpoints, step, work.name)
        train_index.close()
        eval_index.close()
        work.cleanup()
    log.info('Learner finished at step %d.', step)


def _resume_or_prepare(model: Dreamer, optimizers, checkpoints: RunCheckpoints, spec: LearnerSpec,
                       run_id: str, work_dir: str) -> int:
    loaded = checkpoints.read(work_dir)
    if loaded is not None:
        step = restore(loaded.payload, model, optimizers)
        if loaded.passed_over:
            log.warning('%s; resuming run %s from %s at step %d.', loaded.passed_over, run_id, loaded.ref, step)
        else:
            log.info('Resumed from checkpoints/latest.pt of run %s at step %d.', run_id, step)
        # the next save rotates work_dir/latest.pt into previous.pt: it must be the file that read
        loaded.local.replace(Path(work_dir) / CHECKPOINT_NAME)
        return step
    if spec.prepare is not None:
        notes = spec.prepare(model)
        if notes:
            client().log_batch(run_id, tags=[_tag(k, v) for k, v in notes.items()])
    return 0


def _check_nonfinite(in_row: int, step: int, saved_step: int, limit: int) -> None:
    """Say when a run of skipped updates starts; stop the learner after `limit` of them in a row."""
    if in_row == 1:
        log.warning('Learner step %d: a loss or gradient is not finite, so no parameter was updated.', step)
    if in_row >= limit:
        kept = f'its newest checkpoint is of step {saved_step}' if saved_step else 'it has saved no checkpoint'
        raise StageError(f'The loss or a gradient was not finite for {in_row} learner steps in a row (up to step '
                         f'{step}, max_nonfinite_steps {limit}), so the learner stops; {kept}: lower adam_lr '
                         f'or check the data before resuming.')


def _tag(key: str, value: str):
    from mlflow.entities import RunTag
    return RunTag(key, str(value)[:5000])


def _wait_for_data(train: EpisodeIndex, evals: EpisodeIndex, min_train_steps: int, min_all_steps: int,
                   wait: bool) -> bool:
    """Wait until `train` holds min_train_steps and both splits together min_all_steps.

    Returns False when the process is asked to stop while waiting.
    """
    def ready() -> bool:
        train.refresh(force=True)
        evals.refresh(force=True)
        return train.steps >= min_train_steps and train.steps + evals.steps >= min_all_steps

    if ready():
        return True
    if not wait:
        raise ValueError(f'Run {train.run_id} holds {train.steps} steps in {train.folder}/, '
                         f'fewer than the {max(min_train_steps, min_all_steps)} needed to train.')
    log.info('Waiting for data: %d steps for training and %d in all (have %d + %d eval).',
             min_train_steps, min_all_steps, train.steps, evals.steps)
    while not ready():
        if stop_requested():
            return False
        time.sleep(min(5.0, max(0.5, train.listing_interval)))
    log.info('Data ready: %d steps in %d files.', train.steps, len(train.files))
    return True


def _save(model: Dreamer, optimizers, conf: Config, checkpoints: RunCheckpoints, step: int, work_dir: str) -> None:
    latest, previous = Path(work_dir) / CHECKPOINT_NAME, Path(work_dir) / PREVIOUS_NAME
    if latest.exists():  # the checkpoint this learner saved or resumed from last: known to read
        latest.replace(previous)
    save_checkpoint(latest, step, model, optimizers, conf.to_dict())
    checkpoints.upload(latest, previous if previous.exists() else None)


@torch.no_grad()
def _evaluate(model: Dreamer, index: EpisodeIndex, conf: Config, device, metrics_logger: MetricsLogger,
              step: int) -> None:
    """World-model losses on the eval split (fresh streams, state carried within the evaluation)
    and, for categorical images, the share of pixels predicted right (pydreamer.image_stats):
    `image_acc_<kind>` of the object pixels and `image_acc_changed_<kind>` of the pixels that
    changed since the previous frame, where kind is `rec` (posterior), `pred` (prior, one step
    ahead) or `dream` (the last imag_horizon steps of each window, dreamt open-loop)."""
    index.refresh()
    if not index.files:
        return
    stream = BatchStream(index, conf.batch_size, conf.batch_length, 0, conf.allow_mid_reset, seed=step)
    state = model.init_state(conf.batch_size)
    sums: dict[str, float] = defaultdict(float)
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    score = conf.image_categorical and model.wm.decoder.image is not None
    context = max(1, conf.batch_length - conf.imag_horizon)
    for _ in range(conf.eval_batches):
        obs = preprocess(stream.next(), conf, device)
        with model.autocast():
            out = model.wm.loss(obs, state, do_image_pred=score)
        if score:
            dream = model.dream(obs, state, context=context)['image_pred']
            masks = {'': object_pixels(obs['image']), 'changed_': changed_pixels(obs['image'], obs['reset'])}
            for name, pred, t0 in (('rec', out.tensors['image_rec'], 0), ('pred', out.tensors['image_pred'], 0),
                                   ('dream', dream, context)):
                for prefix, mask in masks.items():
                    correct, total = pixel_accuracy(pred[t0:], obs['image'][t0:], mask[t0:])
                    hits[prefix + name][0] += correct
                    hits[prefix + name][1] += total
        state = out.out_state
        for key, value in out.metrics.items():
            sums[key] += float(value) / conf.eval_batches
    values = {f'eval/{k}': v for k, v in sums.items()}
    values.update({f'eval/image_acc_{name}': c / max(1, n) for name, (c, n) in hits.items()})
    metrics_logger.log(values, step)
