"""Actor and critic trained in imagination (DreamerV2 section 2.2, eqs. 4-6).

Time alignment of an imagined trajectory of horizon H from M start states:

    index         0        1        ...   H
    feature       s0 (a posterior state of the batch, detached)  s1 ... sH (prior)
    action        a0 ~ π(s0) -> s1   ...  a_{H-1} -> sH          (H of them)
    reward        r(s1) ... r(sH)  = reward head mean of the state the action led to
    terminal      p(s0) ... p(sH)  = terminal head probability of each state
    value target  R0 ... R_{H-1}   = λ-returns bootstrapped from the target critic v'(sH)
    weight        Π_{k<=t} (1 - p(s_k)): steps after a likely episode end count less
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pydreamer.models.common import MLP
from pydreamer.models.functions import lambda_return
from pydreamer.models.rssm import RSSM, State


class OneHotPolicy:
    """Categorical policy over one-hot actions, from logits (..., A)."""

    def __init__(self, logits: Tensor):
        self.logp = logits.float().log_softmax(-1)

    def sample(self, straight_through: bool = False) -> Tensor:
        probs = self.logp.exp()
        # NaN probabilities of a diverged model would make multinomial raise; any action will do, as
        # the step's loss is then not finite and the learner skips its update
        index = torch.multinomial(probs.nan_to_num(1.0).reshape(-1, probs.shape[-1]), 1).reshape(probs.shape[:-1] + (1,))
        onehot = torch.zeros_like(probs).scatter_(-1, index, 1.0)
        # straight-through: value = onehot, gradient = d probs (DreamerV2 eq. 6 with dynamics backprop)
        return onehot + (probs - probs.detach()) if straight_through else onehot

    def mode(self) -> Tensor:
        return F.one_hot(self.logp.argmax(-1), self.logp.shape[-1]).float()

    def log_prob(self, action: Tensor) -> Tensor:
        return (action * self.logp).sum(-1)

    def entropy(self) -> Tensor:
        return -(self.logp.exp() * self.logp).sum(-1)


class Imagined(NamedTuple):
    """An imagined batch: H+1 states of M trajectories, as dense features or, for discrete
    latents without gradients through the rollout (REINFORCE), as h and one-hot indices."""
    features: Tensor | None   # (H+1, M, F), or None when kept as indices
    h: Tensor | None          # (H+1, M, D)
    z_index: Tensor | None    # (H+1, M, S) flat one-hot indices
    actions: Tensor           # (H, M, A)
    actor_out: Tensor         # (H, M, A): actor logits at states 0..H-1

    def apply(self, mlp: MLP, start: int = 0, stop: int | None = None, detach: bool = False) -> Tensor:
        """mlp over the states start..stop-1 -> (stop - start, M, ...), as float32."""
        if self.features is None:
            return mlp.forward_onehot(self.h[start:stop], self.z_index[start:stop]).float()
        features = self.features[start:stop]
        return mlp(features.detach() if detach else features).float()


class Targets(NamedTuple):
    returns: Tensor   # (H, M) λ-returns R0 .. R_{H-1}
    weight: Tensor    # (H, M) Π_{k<=t} (1 - p(s_k)), detached


class ActorCritic(nn.Module):

    def __init__(self, conf, feature_dim: int):
        super().__init__()
        if conf.actor_grad not in ('reinforce', 'dynamics'):
            raise ValueError(f"actor_grad must be reinforce or dynamics, got {conf.actor_grad!r}.")
        self.actor_grad = conf.actor_grad
        self.gamma = conf.gamma
        self.lambda_ = conf.lambda_gae
        self.entropy_final = conf.entropy
        self.entropy_initial = conf.entropy_initial
        self.entropy_anneal_steps = conf.entropy_anneal_steps
        self.target_interval = conf.target_interval
        layers = conf.actor_critic_layers
        self.actor = MLP(feature_dim, conf.action_dim, conf.mlp_dim, layers, conf.layer_norm)
        self.critic = MLP(feature_dim, 1, conf.mlp_dim, layers, conf.layer_norm)
        self.critic_target = MLP(feature_dim, 1, conf.mlp_dim, layers, conf.layer_norm)
        if conf.zero_init_heads:
            # DreamerV3: a value of 0 everywhere at the start, so early advantages do not depend
            # on the action through a random critic
            nn.init.zeros_(self.critic.model[-1].weight)
            nn.init.zeros_(self.critic.model[-1].bias)
        self.critic_target.requires_grad_(False)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.register_buffer('train_steps', torch.zeros((), dtype=torch.long))

    def distribution(self, actor_out: Tensor) -> OneHotPolicy:
        return OneHotPolicy(actor_out)

    def entropy_weight(self) -> float:
        """The entropy weight η of the current actor step: `entropy`, or with a schedule linear from
        entropy_initial to `entropy` over the first entropy_anneal_steps actor steps."""
        if self.entropy_initial <= 0 or self.entropy_anneal_steps <= 0:
            return self.entropy_final
        progress = min(1.0, max(0, int(self.train_steps) - 1) / self.entropy_anneal_steps)
        return self.entropy_initial + (self.entropy_final - self.entropy_initial) * progress

    def update_target(self) -> None:
        """Hard copy of the critic into the target critic every target_interval training steps
        (on the first step too), as pydreamer."""
        if int(self.train_steps) % self.target_interval == 0:
            self.critic_target.load_state_dict(self.critic.state_dict())
        self.train_steps += 1

    def imagine(self, rssm: RSSM, start: State, horizon: int, noise: Tensor | None = None) -> Imagined:
        """Roll the prior forward `horizon` steps from start states ((M, D), (M, Z)) with actions
        sampled from the actor. With actor_grad == 'dynamics' the actions are straight-through
        (or reparameterised) samples, so gradients flow through the imagined states into the
        actor; with 'reinforce' the rollout carries no gradient (only the actor outputs do). The
        caller freezes the world model's parameters. noise (H, M, ...) as `rssm.noise((H, M))`."""
        if noise is None:
            noise = rssm.noise((horizon, start[0].shape[0]))
        if self.actor_grad == 'reinforce' and rssm.classes:
            return self._imagine_onehot(rssm, start, horizon, noise)
        straight_through = self.actor_grad == 'dynamics'
        state = start
        features = [rssm.feature(*state)]
        actions, outs = [], []
        for i in range(horizon):
            out = self.actor(features[-1])
            action = self.distribution(out).sample(straight_through)
            _, state = rssm.imagine_step(action, state, noise=noise[i])
            features.append(rssm.feature(*state))
            actions.append(action)
            outs.append(out)
        return Imagined(torch.stack(features), None, None, torch.stack(actions), torch.stack(outs))

    def _imagine_onehot(self, rssm: RSSM, start: State, horizon: int, noise: Tensor) -> Imagined:
        # The same rollout with the latents kept as indices: no one-hot features are built and
        # every first layer gathers weight columns instead of multiplying by S·K-wide inputs.
        h, z_index = start[0], rssm.onehot_index(start[1])
        hs, indices, actions, outs = [h], [z_index], [], []
        for i in range(horizon):
            out = self.actor.forward_onehot(h, z_index)
            action = self.distribution(out).sample()
            with torch.no_grad():
                h, z_index = rssm.imagine_step_index(action, h, z_index, noise[i])
            hs.append(h)
            indices.append(z_index)
            actions.append(action)
            outs.append(out)
        return Imagined(None, torch.stack(hs), torch.stack(indices), torch.stack(actions), torch.stack(outs))

    def actor_loss(self, imagined: Imagined, reward: Tensor, terminal: Tensor
                   ) -> tuple[Tensor, Targets, dict[str, Tensor]]:
        """reward (H, M): reward head mean of states 1..H; terminal (H+1, M): terminal
        probabilities of states 0..H. Returns (actor loss, the critic's targets, metrics)."""
        H, M = imagined.actions.shape[:2]
        assert reward.shape == (H, M) and terminal.shape == (H + 1, M)
        dynamics = self.actor_grad == 'dynamics'
        with torch.set_grad_enabled(dynamics and torch.is_grad_enabled()):
            # the target critic has no trainable parameters; under `dynamics` gradients flow through its input
            value_target = imagined.apply(self.critic_target)                 # (H+1, M)
        targets = value_targets(reward, terminal, value_target, self.gamma, self.lambda_)
        if dynamics:
            # DreamerV2 evaluates the entropy on stop-gradient features
            policy = self.distribution(imagined.apply(self.actor, 0, H, detach=True))
            log_prob = None
        else:
            policy = self.distribution(imagined.actor_out)
            log_prob = policy.log_prob(imagined.actions.detach())
        eta = self.entropy_weight()
        loss, metrics = actor_loss(targets, value_target, log_prob, policy.entropy(), eta)
        metrics.update(policy_reward=reward.mean().detach(), policy_reward_std=reward.std().detach(),
                       policy_terminal=terminal.mean().detach(), policy_entropy_weight=torch.tensor(eta))
        if isinstance(policy, OneHotPolicy):
            # the mean action probabilities over imagined states show a collapse onto one action
            probs = policy.logp.detach().exp().flatten(0, -2).mean(0)
            metrics.update({f'policy_prob_{i}': p for i, p in enumerate(probs)})
        return loss, targets._replace(returns=targets.returns.detach()), metrics

    def critic_loss(self, imagined: Imagined, targets: Targets) -> tuple[Tensor, dict[str, Tensor]]:
        """The critic's regression onto the λ-returns of `actor_loss`, on detached features."""
        H = imagined.actions.shape[0]
        value = imagined.apply(self.critic, 0, H, detach=True)                 # (H, M)
        return critic_loss(value, targets)


def value_targets(reward: Tensor, terminal: Tensor, value_target: Tensor, gamma: float, lambda_: float) -> Targets:
    """λ-returns and step weights of an imagined batch (shapes in the module docstring):
    reward (H, M); terminal (H+1, M); value_target (H+1, M) target critic of states 0..H."""
    discount = gamma * (1 - terminal[1:])                                     # (H, M)
    returns = lambda_return(reward, value_target, discount, lambda_)          # (H, M)
    weight = torch.cumprod(1 - terminal[:-1].detach(), 0)                     # (H, M)
    return Targets(returns, weight)


def actor_loss(targets: Targets, value_target: Tensor, log_prob: Tensor | None, entropy: Tensor,
               entropy_weight: float) -> tuple[Tensor, dict[str, Tensor]]:
    """log_prob (H, M) of the taken actions for REINFORCE, or None for dynamics backpropagation
    (the actor then maximises the λ-return directly, gradients flowing through reward, terminal
    and value_target); entropy (H, M).

        actor loss = mean(w · (-log π(a)·sg(R - v') - η H(π)))       REINFORCE (eq. 6, ρ = 1)
                     mean(w · (-R - η H(π)))                           dynamics  (eq. 6, ρ = 0)
    """
    returns, weight = targets
    advantage = (returns - value_target[:-1]).detach()
    loss_policy = -returns if log_prob is None else -log_prob * advantage
    loss = (weight * (loss_policy - entropy_weight * entropy)).mean()
    with torch.no_grad():
        metrics = {'loss_actor': loss.detach(), 'policy_entropy': entropy.mean(),
                   'policy_return': returns.mean(), 'policy_advantage_std': advantage.std(),
                   'policy_weight': weight.mean()}
    return loss, metrics


def critic_loss(value: Tensor, targets: Targets) -> tuple[Tensor, dict[str, Tensor]]:
    """value (H, M) online critic of states 0..H-1.   critic loss = mean(w · 0.5 (sg(R) - v)²)"""
    returns, weight = targets
    loss = (weight * 0.5 * (returns.detach() - value).square()).mean()
    with torch.no_grad():
        metrics = {'loss_critic': loss.detach(), 'policy_value': value[0].mean(), 'policy_value_im': value.mean()}
    return loss, metrics
