"""Dreamer = world model + actor-critic: imagination, the single-step policy and dreams. Its
training step and optimizers are in pydreamer/train_step.py."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from torch import Tensor

from pydreamer.models.actor_critic import ActorCritic, Imagined
from pydreamer.models.common import frozen
from pydreamer.models.rssm import State
from pydreamer.models.world_model import WorldModel

def amp_enabled(setting: str, device_type: str) -> bool:
    """The `amp` config key (auto | true | false; the config checks the value and turns a bool
    into its word): bf16 autocast; auto = on for cpu and for CUDA devices with bf16 support."""
    if setting != 'auto':
        return setting == 'true'
    return device_type == 'cpu' or device_type == 'cuda' and torch.cuda.is_bf16_supported()


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

    @property
    def device(self) -> torch.device:
        return self.wm.rssm.prior_h.weight.device

    def autocast(self):
        """bf16 autocast around forward computations (distributions and losses stay float32)."""
        device_type = self.device.type
        if not amp_enabled(self.amp, device_type):
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=torch.bfloat16)

    def init_state(self, batch_size: int) -> State:
        return self.wm.init_state(batch_size)

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
