"""Dreamer = world model + actor-critic, with optimizers by role and the single-step policy.

Roles: 'wm' (encoder, RSSM, decoders), 'actor', 'critic'. Each role has its own AdamW and
its own gradient-norm clip; the target critic is not trained (hard copies of the critic).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from torch import Tensor

from pydreamer.models.actor_critic import ActorCritic
from pydreamer.models.common import frozen
from pydreamer.models.rssm import State
from pydreamer.models.world_model import WorldModel

ROLES = ('wm', 'actor', 'critic')


def amp_enabled(setting, device_type: str) -> bool:
    """The `amp` config key: auto (bf16 autocast on cpu only) | true | false."""
    value = str(setting).lower()
    if value == 'auto':
        return device_type == 'cpu'
    if value in ('true', 'yes', '1', 'on'):
        return True
    if value in ('false', 'no', '0', 'off'):
        return False
    raise ValueError(f"amp must be auto, true or false, got {setting!r}.")


class Dreamer(nn.Module):

    def __init__(self, conf, wm_only: bool = False):
        super().__init__()
        self.wm = WorldModel(conf)
        self.ac = ActorCritic(conf, self.wm.feature_dim)
        # world-model-only training: no imagination, no actor or critic losses
        self.wm_only = wm_only
        self.imag_horizon = conf.imag_horizon
        self.amp = conf.amp
        amp_enabled(conf.amp, 'cpu')  # fail early on a bad value
        self.lr = {'wm': conf.adam_lr, 'actor': conf.adam_lr_actor, 'critic': conf.adam_lr_critic}
        self.grad_clip = {'wm': conf.grad_clip, 'actor': conf.grad_clip_ac, 'critic': conf.grad_clip_ac}
        self.adam_eps = conf.adam_eps
        self.weight_decay = conf.weight_decay

    @property
    def device(self) -> torch.device:
        return self.wm.rssm.prior_h.weight.device

    def autocast(self):
        """bf16 autocast around forward computations (distributions and losses stay float32)."""
        device_type = self.device.type
        if not amp_enabled(self.amp, device_type):
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=torch.bfloat16)

    def role_parameters(self, role: str) -> list[nn.Parameter]:
        module = {'wm': self.wm, 'actor': self.ac.actor, 'critic': self.ac.critic}[role]
        return list(module.parameters())

    def init_state(self, batch_size: int) -> State:
        return self.wm.init_state(batch_size)

    def init_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        fused = self.device.type == 'cpu'  # the fused CPU kernel is several times faster than the loop
        return {role: torch.optim.AdamW(self.role_parameters(role), lr=self.lr[role], eps=self.adam_eps,
                                        weight_decay=self.weight_decay, fused=fused)
                for role in ROLES}

    def training_step(self, obs: dict[str, Tensor], in_state: State, do_image_pred: bool = False
                      ) -> tuple[dict[str, Tensor], State, dict[str, Tensor], dict[str, Tensor]]:
        """obs: preprocessed (T, B, ...) tensors; in_state of B (or B·I) rows.

        Returns (losses by role, out_state, metrics (scalars), tensors ((T, B, ...), for logging)).
        In wm_only mode the losses hold only 'wm' and nothing is imagined.
        """
        with self.autocast():
            wm = self.wm.training_step(obs, in_state, do_image_pred=do_image_pred)
            losses = {'wm': wm.loss}
            metrics, tensors = dict(wm.metrics), dict(wm.tensors)
            if not self.wm_only:
                losses_ac, metrics_ac, tensors_ac = self._actor_critic_step(wm.states)
                losses.update(losses_ac)
                metrics.update(metrics_ac)
                T, B, I = wm.features.shape[:3]
                tensors['policy_value'] = tensors_ac['value'][0].reshape(T, B, I).mean(-1)
        return losses, wm.out_state, metrics, tensors

    def _actor_critic_step(self, states: State):
        # Imagination starts from every posterior state (T·B·I of them), detached (DreamerV2 2.2).
        h, z = states
        start = (h.detach().flatten(0, 2), z.detach().flatten(0, 2))           # (M, D), (M, Z)
        self.ac.update_target()
        dynamics = self.ac.actor_grad == 'dynamics'
        with frozen(self.wm):
            imagined = self.ac.imagine(self.wm.rssm, start, self.imag_horizon)
            with contextlib.nullcontext() if dynamics else torch.no_grad():
                reward = imagined.apply(self.wm.decoder.reward, 1)                # (H, M)
                terminal = torch.sigmoid(imagined.apply(self.wm.decoder.terminal))  # (H+1, M)
            return self.ac.training_step(imagined, reward, terminal)

    def update(self, losses: dict[str, Tensor], optimizers: dict[str, torch.optim.Optimizer]
               ) -> dict[str, Tensor]:
        """Back-propagate and step each role in `losses`; returns grad_norm_<role> (before clipping).

        One backward pass of the summed losses gives each role exactly the gradient of its own
        loss: the world model is frozen and its states detached during imagination, the critic
        sees detached features, and the actor's loss uses only the target critic.
        """
        for role in losses:
            optimizers[role].zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        norms = {}
        for role in losses:
            params = [p for p in optimizers[role].param_groups[0]['params'] if p.grad is not None]
            norms[f'grad_norm_{role}'] = nn.utils.clip_grad_norm_(params, self.grad_clip[role], foreach=True)
            optimizers[role].step()
        return norms

    @torch.no_grad()
    def policy(self, obs: dict[str, Tensor], state: State, greedy: bool = False
               ) -> tuple[Tensor, State, dict[str, Tensor]]:
        """One agent step for B environments. obs: preprocessed (1, B, ...) tensors with the image
        (and/or vecobs), the previous action and reset; state ((B, D), (B, Z)).

        Returns (action (B, A) float32: one-hot for discrete actions, new state,
        {'policy_value': (B,), 'policy_entropy': (B,)}).
        """
        assert obs['action'].dim() == 3 and obs['action'].shape[0] == 1, 'policy expects (1, B, ...) tensors'
        # float32 even when amp is on: for a few environments the casts cost more than bf16 saves
        embed = self.wm.encoder(obs)[0]                                           # (B, E)
        _, state = self.wm.rssm.observe_step(embed, obs['action'][0], obs['reset'][0], state)
        feature = self.wm.rssm.feature(*state)                                    # (B, F)
        policy = self.ac.distribution(self.ac.actor(feature))
        value = self.ac.critic(feature)
        action = policy.mode() if greedy else policy.sample()
        return action.float(), state, {'policy_value': value, 'policy_entropy': policy.entropy()}

    @torch.no_grad()
    def dream(self, obs: dict[str, Tensor], in_state: State, context: int = 1, use_actor: bool = False
              ) -> dict[str, Tensor]:
        """Open-loop predictions for visualisation (see WorldModel.dream); with `use_actor` the
        imagined part follows the actor's sampled actions instead of the recorded ones."""
        actor = (lambda feature: self.ac.distribution(self.ac.actor(feature)).sample()) if use_actor else None
        with self.autocast():
            return self.wm.dream(obs, in_state, context=context, actor=actor)
