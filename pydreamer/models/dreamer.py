"""Dreamer = world model + actor-critic, with optimizers by role and the single-step policy.

Roles: 'wm' (encoder, RSSM, decoders), 'actor', 'critic'. Each role has its own AdamW and
its own gradient-norm clip; the target critic is not trained (hard copies of the critic).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from torch import Tensor

from pydreamer.models.actor_critic import ActorCritic, Imagined
from pydreamer.models.common import frozen
from pydreamer.models.rssm import State
from pydreamer.models.world_model import WorldModel

ROLES = ('wm', 'actor', 'critic')


def amp_enabled(setting: str, device_type: str) -> bool:
    """The `amp` config key (auto | true | false; the config checks the value and turns a bool
    into its word): bf16 autocast, on for cpu with auto."""
    return device_type == 'cpu' if setting == 'auto' else setting == 'true'


class Dreamer(nn.Module):

    def __init__(self, conf, wm_only: bool = False):
        super().__init__()
        self.wm = WorldModel(conf)
        self.ac = ActorCritic(conf, self.wm.feature_dim)
        # world-model-only training: no imagination, no actor or critic losses
        self.wm_only = wm_only
        self.imag_horizon = conf.imag_horizon
        self.imag_starts = conf.imag_starts
        self.amp = conf.amp
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

    def train_step(self, obs: dict[str, Tensor], in_state: State, optimizers: dict[str, torch.optim.Optimizer],
                   train_wm: bool = True, train_ac: bool = True) -> tuple[State, dict[str, Tensor]]:
        """One gradient step of every role on a batch. obs: preprocessed (T, B, ...) tensors;
        in_state of B (or B·I) rows. Returns (out_state, scalar metrics incl. grad_norm_<role>, and
        nonfinite_skipped: 1 when a loss or gradient was not finite and no parameter was updated).

        Each loss is back-propagated as soon as it is known, so its graph is freed before the
        next one is built: peak memory is the largest of the world model's, the actor's rollout
        and the critic's graphs rather than their sum. The optimizers step after all backward
        passes, so every part sees the parameters the batch started with, as upstream's single
        summed backward. With train_wm False the world model only infers states (no graph); with
        train_ac False (actor warm-up) there is no imagination and actor and critic stay as they are.
        """
        train_ac = train_ac and not self.wm_only
        roles = (['wm'] if train_wm else []) + (['actor', 'critic'] if train_ac else [])
        for role in roles:
            optimizers[role].zero_grad(set_to_none=True)
        with torch.set_grad_enabled(train_wm), self.autocast():
            wm = self.wm.training_step(obs, in_state)
        losses = [wm.loss] if train_wm else []
        if train_wm:
            wm.loss.backward()
        metrics = dict(wm.metrics)
        if train_ac:
            imagined, reward, terminal = self.imagine(wm.states)
            with self.autocast():
                loss_actor, targets, metrics_actor = self.ac.actor_loss(imagined, reward, terminal)
            loss_actor.backward()
            with self.autocast():
                loss_critic, metrics_critic = self.ac.critic_loss(imagined, targets)
            loss_critic.backward()
            metrics.update(metrics_actor, **metrics_critic)
            losses += [loss_actor, loss_critic]
        for role in roles:
            params = [p for p in optimizers[role].param_groups[0]['params'] if p.grad is not None]
            metrics[f'grad_norm_{role}'] = nn.utils.clip_grad_norm_(params, self.grad_clip[role], foreach=True)
        # One non-finite loss or gradient norm would make every parameter it reaches NaN (clipping
        # scales by it): no role steps, as under AMP's GradScaler, and the optimizer states stay.
        checked = [t.detach().float() for t in losses] + [metrics[f'grad_norm_{role}'] for role in roles]
        finite = bool(torch.isfinite(torch.stack(checked)).all()) if checked else True
        if finite:
            for role in roles:
                optimizers[role].step()
        metrics['nonfinite_skipped'] = torch.tensor(0.0 if finite else 1.0)
        return wm.out_state, {k: v.detach() for k, v in metrics.items()}

    def imagine(self, states: State) -> tuple[Imagined, Tensor, Tensor]:
        """Imagined trajectories from the posterior states (h (T, B, I, D), z (T, B, I, Z)),
        detached as in DreamerV2 2.2, with the world model's reward (H, M) of states 1..H and
        terminal probabilities (H+1, M) of states 0..H. M = T·B·I (every state, upstream), or
        imag_starts of them drawn uniformly without replacement. Advances the target critic."""
        h, z = states
        start = (h.detach().flatten(0, 2), z.detach().flatten(0, 2))           # (T·B·I, D), (T·B·I, Z)
        if 0 < self.imag_starts < start[0].shape[0]:
            chosen = torch.randperm(start[0].shape[0], device=h.device)[:self.imag_starts]
            start = (start[0][chosen], start[1][chosen])                       # (M, D), (M, Z)
        self.ac.update_target()
        dynamics = self.ac.actor_grad == 'dynamics'
        with frozen(self.wm), self.autocast():
            imagined = self.ac.imagine(self.wm.rssm, start, self.imag_horizon)
            with contextlib.nullcontext() if dynamics else torch.no_grad():
                reward = imagined.apply(self.wm.decoder.reward, 1)                # (H, M)
                terminal = torch.sigmoid(imagined.apply(self.wm.decoder.terminal))  # (H+1, M)
        return imagined, reward, terminal

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
