"""The learner's gradient step on a Dreamer, and its optimizers.

Roles: 'wm' (encoder, RSSM, decoders), 'actor', 'critic'. Each role has its own AdamW and its own
gradient-norm clip; the target critic is not trained (hard copies of the critic).
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
from torch import Tensor

from pydreamer.config import Config
from pydreamer.models.dreamer import Dreamer
from pydreamer.models.rssm import State

ROLES = ('wm', 'actor', 'critic')


class RoleOptimizers(dict):
    """AdamW by role, with each role's gradient-norm clip."""

    def __init__(self, optimizers: Mapping[str, torch.optim.Optimizer], grad_clip: Mapping[str, float]):
        super().__init__(optimizers)
        self.grad_clip = dict(grad_clip)


def role_parameters(model: Dreamer, role: str) -> list[nn.Parameter]:
    module = {'wm': model.wm, 'actor': model.ac.actor, 'critic': model.ac.critic}[role]
    return list(module.parameters())


def init_optimizers(model: Dreamer, conf: Config) -> RoleOptimizers:
    lr = {'wm': conf.adam_lr, 'actor': conf.adam_lr_actor, 'critic': conf.adam_lr_critic}
    fused = model.device.type in ('cpu', 'cuda')  # one kernel for all parameters: several times faster than the loop
    return RoleOptimizers(
        {role: torch.optim.AdamW(role_parameters(model, role), lr=lr[role], eps=conf.adam_eps,
                                 weight_decay=conf.weight_decay, fused=fused) for role in ROLES},
        {'wm': conf.grad_clip, 'actor': conf.grad_clip_ac, 'critic': conf.grad_clip_ac})


def train_step(model: Dreamer, obs: dict[str, Tensor], in_state: State, optimizers: RoleOptimizers,
               train_wm: bool = True, train_ac: bool = True) -> tuple[State, dict[str, Tensor]]:
    """One gradient step of every role on a batch. obs: preprocessed (T, B, ...) tensors;
    in_state of B (or B·I) rows. Returns (out_state, scalar metrics incl. grad_norm_<role>, and
    nonfinite_skipped: 1 when a loss or gradient was not finite and no parameter was updated).

    Each loss is back-propagated as soon as it is known, so its graph is freed before the next one
    is built: peak memory is the largest of the world model's, the actor's rollout and the
    critic's graphs rather than their sum. The optimizers step after all backward passes, so every
    part sees the parameters the batch started with, as upstream's single summed backward. With
    train_wm False the world model only infers states (no graph); with train_ac False (actor
    warm-up) there is no imagination and actor and critic stay as they are.
    """
    train_ac = train_ac and not model.wm_only
    roles = (['wm'] if train_wm else []) + (['actor', 'critic'] if train_ac else [])
    for role in roles:
        optimizers[role].zero_grad(set_to_none=True)
    with torch.set_grad_enabled(train_wm), model.autocast():
        wm = model.wm.loss(obs, in_state)
    losses = [wm.loss] if train_wm else []
    if train_wm:
        wm.loss.backward()
    metrics = dict(wm.metrics)
    if train_ac:
        imagined, reward, terminal = model.imagine(wm.states)
        with model.autocast():
            loss_actor, targets, metrics_actor = model.ac.actor_loss(imagined, reward, terminal)
        loss_actor.backward()
        with model.autocast():
            loss_critic, metrics_critic = model.ac.critic_loss(imagined, targets)
        loss_critic.backward()
        metrics.update(metrics_actor, **metrics_critic)
        losses += [loss_actor, loss_critic]
    for role in roles:
        params = [p for p in optimizers[role].param_groups[0]['params'] if p.grad is not None]
        metrics[f'grad_norm_{role}'] = nn.utils.clip_grad_norm_(params, optimizers.grad_clip[role], foreach=True)
    # One non-finite loss or gradient norm would make every parameter it reaches NaN (clipping
    # scales by it): no role steps, as under AMP's GradScaler, and the optimizer states stay.
    checked = [t.detach().float() for t in losses] + [metrics[f'grad_norm_{role}'] for role in roles]
    finite = bool(torch.isfinite(torch.stack(checked)).all()) if checked else True
    if finite:
        for role in roles:
            optimizers[role].step()
    metrics['nonfinite_skipped'] = torch.tensor(0.0 if finite else 1.0)
    return wm.out_state, {k: v.detach() for k, v in metrics.items()}
