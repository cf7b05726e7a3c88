"""The generators' network policy: the actor of the learner's newest checkpoint in the same run."""
from __future__ import annotations

import logging
import tempfile
import time

import numpy as np
import torch

from pydreamer.checkpoint import CheckpointError, RunCheckpoints
from pydreamer.config import Config
from pydreamer.launching.processes import stop_requested

log = logging.getLogger(__name__)


class NetworkPolicy:
    """The Dreamer actor of the newest checkpoint of a run, reloaded every `reload_seconds`.

    Before the learner's first checkpoint the generator waits (`wait_for_checkpoint`) rather than
    piling up more prefill-policy data. Only a missing checkpoint means "not yet"; a latest.pt that
    cannot be read gives way to the previous.pt beside it, as on a learner's resume, and when
    neither reads, that is logged with its cause and the current weights stay in use.
    With `fallback` (a policy) and `min_step`, episodes that start while the loaded checkpoint is
    from before learner step `min_step` (the actor's warm-up) are played by the fallback.
    """

    def __init__(self, conf: Config, run_id: str, action_dim: int, seed: int, reload_seconds: float = 60.0,
                 fallback=None, min_step: int = 0):
        from pydreamer.models.dreamer import Dreamer
        self.conf = conf
        self.action_dim = action_dim
        self.reload_seconds = reload_seconds
        self.checkpoints = RunCheckpoints(run_id)
        torch.manual_seed(seed)
        self.model = Dreamer(conf).eval()
        self.loaded_step: int | None = None
        self._checked_at = -float('inf')
        self._state = None
        self._prev_action = np.zeros(action_dim, np.float32)
        self.fallback = fallback
        self.min_step = min_step
        self._use_fallback = False

    def _maybe_reload(self, force: bool = False) -> None:
        if not force and time.time() - self._checked_at < self.reload_seconds:
            return
        self._checked_at = time.time()
        with tempfile.TemporaryDirectory(prefix='pydreamer-policy-') as tmp:
            try:
                loaded = self.checkpoints.read(tmp, mmap=True)
                if loaded is None:
                    return
                if loaded.payload['step'] != self.loaded_step:
                    self._check_fits(loaded.payload['model'])  # load_state_dict copies what fits before it raises
                    self.model.load_state_dict(loaded.payload['model'])
                    self.loaded_step = int(loaded.payload['step'])
                    # info, not a warning: the learner that resumes from the same file says why
                    log.info('Network policy loaded the checkpoint of learner step %d%s.', self.loaded_step,
                             f' from {loaded.ref}' if loaded.passed_over else '')
            except (CheckpointError, OSError, RuntimeError) as e:
                log.warning('Could not load the newest checkpoint (%s: %s); keeping the current policy.',
                            type(e).__name__, e)

    def _check_fits(self, state: dict) -> None:
        own = self.model.state_dict()
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        if missing or unexpected:
            raise CheckpointError(f'Checkpoint {self.checkpoints.uri} does not fit the policy\'s model '
                                  f'(tensors missing: {missing[:3]}; unknown: {unexpected[:3]}).')
        for key, value in own.items():
            if state[key].shape != value.shape:
                raise CheckpointError(f'Checkpoint {self.checkpoints.uri} has {key} of shape {tuple(state[key].shape)}, '
                                      f'the policy\'s model {tuple(value.shape)}.')

    def wait_for_checkpoint(self, poll_seconds: float = 1.0) -> bool:
        """Block until a checkpoint is loaded; False if the process was asked to stop first."""
        if self.loaded_step is None:
            log.info('Waiting for the learner\'s first checkpoint.')
        while self.loaded_step is None:
            if stop_requested():
                return False
            self._maybe_reload(force=True)
            if self.loaded_step is None:
                time.sleep(poll_seconds)
        return True

    def wait_for_learner(self, stored_steps: int, ratio: float, poll_seconds: float = 2.0) -> None:
        """Pause while the run holds more than `ratio` stored steps per learner step (not after a stop
        request: a generator whose learner died would otherwise wait for ever)."""
        while (self.loaded_step is not None and stored_steps > ratio * max(1, self.loaded_step)
               and not stop_requested()):
            time.sleep(poll_seconds)
            self._maybe_reload(force=True)

    def __call__(self, obs: dict) -> tuple[int, dict]:
        from pydreamer.preprocess import preprocess_step
        if obs['reset']:
            self._maybe_reload()
            self._state = self.model.init_state(1)
            self._prev_action = np.zeros(self.action_dim, np.float32)
            self._use_fallback = self.fallback is not None and (self.loaded_step or 0) < self.min_step
        if self.loaded_step is None:
            raise RuntimeError('NetworkPolicy has no checkpoint yet; call wait_for_checkpoint() first.')
        if self._use_fallback:
            action, metrics = self.fallback(obs)
            return action, {**metrics, 'policy_fallback': 1.0}
        step = {k: obs[k][np.newaxis] for k in ('image', 'vecobs') if k in obs}
        step.update(action=self._prev_action[np.newaxis], reset=np.array([obs['reset']]))
        action, self._state, metrics = self.model.policy(preprocess_step(step, self.conf), self._state)
        index = int(action[0].argmax())
        self._prev_action = np.eye(self.action_dim, dtype=np.float32)[index]
        return index, {'policy_value': float(metrics['policy_value'][0]),
                       'policy_entropy': float(metrics['policy_entropy'][0]),
                       'policy_learner_step': float(self.loaded_step)}
