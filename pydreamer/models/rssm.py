"""Recurrent state-space model (DreamerV2 eq. 1): deterministic h, stochastic z.

    h[t] = GRU(ELU(LN(Linear(z[t-1]) + Linear(a[t]))), h[t-1])     recurrent model
    prior      p(z[t] | h[t])        = f(ELU(LN(Linear(h[t]))))            transition predictor
    posterior  q(z[t] | h[t], e[t])  = f(ELU(LN(Linear(h[t]) + Linear(e[t]))))   representation model

Time alignment (as the data): action[t] led to observation t, so step t consumes the state of
t-1, action[t] and embed[t]. reset[t] zeroes the incoming state before step t (the first
observation of an episode; its action row is zero).

The state is a pair (h (N, D), z (N, Z)) with Z = stoch_dim·stoch_discrete (one-hot
categoricals) or stoch_dim (Gaussian). The feature seen by all heads is [h, z].
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pydreamer.models.common import LN_EPS, norm_layer, onehot_matmul
from pydreamer.models.functions import latent_noise, sample_index, sample_latent

State = tuple[Tensor, Tensor]


class NormGRUCell(nn.Module):
    """GRU cell with a LayerNorm on each gate pre-activation (`gru_layernorm`)."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.weight_ih = nn.Linear(input_size, 3 * hidden_size, bias=False)
        self.weight_hh = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.ln_reset = nn.LayerNorm(hidden_size, eps=LN_EPS)
        self.ln_update = nn.LayerNorm(hidden_size, eps=LN_EPS)
        self.ln_newval = nn.LayerNorm(hidden_size, eps=LN_EPS)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        reset_i, update_i, newval_i = self.weight_ih(x).chunk(3, -1)
        reset_h, update_h, newval_h = self.weight_hh(h).chunk(3, -1)
        reset = torch.sigmoid(self.ln_reset(reset_i + reset_h))
        update = torch.sigmoid(self.ln_update(update_i + update_h))
        newval = torch.tanh(self.ln_newval(newval_i + reset * newval_h))
        return update * newval + (1 - update) * h


class DV2GRUCell(nn.Module):
    """DreamerV2's GRU (`gru_layernorm_dv2`): one LayerNorm over all gates, update bias -1 and
    the reset gate applied after the sum ("late reset")."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.weight_ih = nn.Linear(input_size, 3 * hidden_size, bias=False)
        self.weight_hh = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.norm = nn.LayerNorm(3 * hidden_size, eps=LN_EPS)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        reset, update, newval = self.norm(self.weight_ih(x) + self.weight_hh(h)).chunk(3, -1)
        reset = torch.sigmoid(reset)
        update = torch.sigmoid(update - 1)
        newval = torch.tanh(reset * newval)
        return update * newval + (1 - update) * h


class GRUStack(nn.Module):
    """`layers` GRU cells in series; the deterministic state is split evenly among them."""

    CELLS = {'gru': nn.GRUCell, 'gru_layernorm': NormGRUCell, 'gru_layernorm_dv2': DV2GRUCell}

    def __init__(self, input_size: int, hidden_size: int, layers: int, cell_type: str):
        super().__init__()
        if cell_type not in self.CELLS:
            raise ValueError(f"gru_type must be one of {', '.join(self.CELLS)}, got {cell_type!r}.")
        if layers < 1 or hidden_size % layers:
            raise ValueError(f'deter_dim {hidden_size} must split evenly into gru_layers {layers}.')
        size = hidden_size // layers
        cell = self.CELLS[cell_type]
        self.cells = nn.ModuleList([cell(input_size if i == 0 else size, size) for i in range(layers)])

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        if len(self.cells) == 1:
            return self.cells[0](x, h)
        outputs = []
        for cell, h_i in zip(self.cells, h.chunk(len(self.cells), -1)):
            x = cell(x, h_i)
            outputs.append(x)
        return torch.cat(outputs, -1)


class RSSMSequence(NamedTuple):
    prior: Tensor      # (T, B, I, P) prior parameters
    post: Tensor       # (T, B, I, P) posterior parameters
    h: Tensor          # (T, B, I, D)
    z: Tensor          # (T, B, I, Z) posterior samples
    out_state: State   # ((B·I, D), (B·I, Z)), detached: the state after the last step


class RSSM(nn.Module):

    def __init__(self, conf, embed_dim: int):
        super().__init__()
        self.deter_dim = conf.deter_dim
        self.stoch_dim = conf.stoch_dim
        self.classes = conf.stoch_discrete
        self.z_dim = conf.stoch_dim * (conf.stoch_discrete or 1)
        self.params_dim = conf.stoch_dim * (conf.stoch_discrete or 2)
        hidden, ln = conf.hidden_dim, conf.layer_norm
        if conf.action_dim <= 0:
            raise ValueError('action_dim must be set to the number of actions of the environment.')
        self.z_in = nn.Linear(self.z_dim, hidden)
        self.a_in = nn.Linear(conf.action_dim, hidden, bias=False)  # no bias: added to z_in's
        self.in_norm = norm_layer(hidden, ln)
        self.gru = GRUStack(hidden, self.deter_dim, conf.gru_layers, conf.gru_type)
        self.prior_h = nn.Linear(self.deter_dim, hidden)
        self.prior_norm = norm_layer(hidden, ln)
        self.prior_out = nn.Linear(hidden, self.params_dim)
        self.post_h = nn.Linear(self.deter_dim, hidden)
        self.post_e = nn.Linear(embed_dim, hidden, bias=False)
        self.post_norm = norm_layer(hidden, ln)
        self.post_out = nn.Linear(hidden, self.params_dim)
        # flat one-hot index of class 0 of each categorical (index-based imagination)
        self.register_buffer('offsets', torch.arange(0, self.z_dim, self.classes or 1), persistent=False)

    @property
    def feature_dim(self) -> int:
        return self.deter_dim + self.z_dim

    def init_state(self, batch_size: int) -> State:
        w = self.prior_h.weight
        return (w.new_zeros(batch_size, self.deter_dim), w.new_zeros(batch_size, self.z_dim))

    def noise(self, shape: tuple[int, ...]) -> Tensor:
        """Sampling noise for a batch of `shape`, e.g. (T, N) for a sequence or (N,) for one step."""
        return latent_noise(shape, self.stoch_dim, self.classes, self.prior_h.weight.device)

    @staticmethod
    def feature(h: Tensor, z: Tensor) -> Tensor:
        return torch.cat((h, z.to(h.dtype)), -1)

    def _recurrent(self, z: Tensor, a_proj: Tensor, h: Tensor) -> Tensor:
        # z (N, Z), a_proj (N, hidden) = a_in(a) + z_in.bias, h (N, D) -> new h (N, D)
        x = F.elu(self.in_norm(torch.addmm(a_proj, z, self.z_in.weight.t())))
        return self.gru(x, h)

    def prior(self, h: Tensor) -> Tensor:
        """Prior parameters from h, for any leading dims: (..., D) -> (..., P)."""
        return self.prior_out(F.elu(self.prior_norm(self.prior_h(h))))

    def _post(self, h: Tensor, e_proj: Tensor) -> Tensor:
        # e_proj (N, hidden) = post_e(embed) + post_h.bias
        return self.post_out(F.elu(self.post_norm(torch.addmm(e_proj, h, self.post_h.weight.t()))))

    def _action_proj(self, action: Tensor) -> Tensor:
        return self.a_in(action) + self.z_in.bias

    def _embed_proj(self, embed: Tensor) -> Tensor:
        return self.post_e(embed) + self.post_h.bias

    def observe_step(self, embed: Tensor, action: Tensor, reset: Tensor | None, state: State,
                     noise: Tensor | None = None) -> tuple[Tensor, State]:
        """One posterior step. embed (N, E), action (N, A), reset (N,) bool or None.
        Returns (posterior params (N, P), new state)."""
        h, z = state
        if reset is not None:
            keep = (~reset).unsqueeze(-1).to(h.dtype)
            h, z = h * keep, z * keep
        h = self._recurrent(z, self._action_proj(action), h)
        post = self._post(h, self._embed_proj(embed))
        return post, (h, sample_latent(post, self.classes, noise))

    def imagine_step(self, action: Tensor, state: State, reset: Tensor | None = None,
                     noise: Tensor | None = None) -> tuple[Tensor, State]:
        """One prior step (no observation). action (N, A) -> (prior params (N, P), new state)."""
        h, z = state
        if reset is not None:
            keep = (~reset).unsqueeze(-1).to(h.dtype)
            h, z = h * keep, z * keep
        h = self._recurrent(z, self._action_proj(action), h)
        prior = self.prior(h)
        return prior, (h, sample_latent(prior, self.classes, noise))

    def onehot_index(self, z: Tensor) -> Tensor:
        """Dense one-hot latents (..., S·K) -> flat indices (..., S) of their active entries."""
        return z.unflatten(-1, (self.stoch_dim, self.classes)).argmax(-1) + self.offsets

    def imagine_step_index(self, action: Tensor, h: Tensor, z_index: Tensor, noise: Tensor | None = None
                           ) -> tuple[Tensor, Tensor]:
        """`imagine_step` for discrete latents kept as flat indices, without gradients through
        the latents (imagination for REINFORCE). action (N, A), h (N, D), z_index (N, S).
        Returns (new h, new z_index); the same draw as `imagine_step` with the same noise."""
        a_proj = self._action_proj(action)
        x = F.elu(self.in_norm(onehot_matmul(self.z_in.weight, z_index, a_proj.dtype) + a_proj))
        h = self.gru(x, h)
        return h, sample_index(self.prior(h), self.classes, noise) + self.offsets

    def forward(self, embed: Tensor, action: Tensor, reset: Tensor, in_state: State,
                iwae_samples: int = 1, noise: Tensor | None = None) -> RSSMSequence:
        """The posterior rollout over a sequence.

        embed (T, B, E), action (T, B, A), reset (T, B) bool; in_state of B or B·I rows;
        noise (T, B·I, ...) as from `self.noise((T, B·I))`, drawn here when None.
        """
        T, B = embed.shape[:2]
        I = iwae_samples
        N = B * I
        assert action.shape[:2] == (T, B) and reset.shape == (T, B), 'embed, action, reset must share (T, B)'
        h, z = in_state
        if h.shape[0] == B and I > 1:
            h, z = h.repeat_interleave(I, 0), z.repeat_interleave(I, 0)
        assert h.shape == (N, self.deter_dim) and z.shape == (N, self.z_dim), \
            f'in_state must have {B} or {N} rows, got {tuple(h.shape)}, {tuple(z.shape)}'

        # Everything that does not depend on the recurrence is computed for all T at once.
        a_proj = self._action_proj(action)                                    # (T, B, hidden)
        e_proj = self._embed_proj(embed)                                      # (T, B, hidden)
        if I > 1:
            a_proj, e_proj = a_proj.repeat_interleave(I, 1), e_proj.repeat_interleave(I, 1)
            reset = reset.repeat_interleave(I, 1)
        keep = (~reset).unsqueeze(-1).to(h.dtype)                             # (T, N, 1)
        has_reset = reset.any(1).tolist()                                     # one sync for all T
        if noise is None:
            noise = self.noise((T, N))
        posts, hs, zs = [], [], []
        for t in range(T):
            if has_reset[t]:
                h, z = h * keep[t], z * keep[t]
            h = self._recurrent(z, a_proj[t], h)
            post = self._post(h, e_proj[t])
            z = sample_latent(post, self.classes, noise[t])
            posts.append(post)
            hs.append(h)
            zs.append(z)
        h_seq = torch.stack(hs)                                               # (T, N, D)
        prior = self.prior(h_seq)                                             # (T, N, P), batched
        return RSSMSequence(prior=prior.unflatten(1, (B, I)),
                            post=torch.stack(posts).unflatten(1, (B, I)),
                            h=h_seq.unflatten(1, (B, I)),
                            z=torch.stack(zs).unflatten(1, (B, I)),
                            out_state=(h.detach(), z.detach()))
