"""The DreamerV2 world model: encoder, RSSM, decoders and its loss (DreamerV2 eq. 2)."""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn as nn
from torch import Tensor

from pydreamer.models.common import init_weights_tf2
from pydreamer.models.decoders import MultiDecoder
from pydreamer.models.encoders import MultiEncoder
from pydreamer.models.functions import (
    kl_balanced, latent_log_prob, logavgexp, sample_latent)
from pydreamer.models.rssm import RSSM, State


class WorldModelOutput(NamedTuple):
    loss: Tensor                    # scalar
    terms: dict[str, Tensor]        # the unweighted terms of the loss (T, B, I): kl and the reconstructions
    features: Tensor                # (T, B, I, F)
    states: State                   # h (T, B, I, D), z (T, B, I, Z): every posterior state
    out_state: State                # ((B·I, D), (B·I, Z)), detached
    metrics: dict[str, Tensor]      # scalars, detached
    tensors: dict[str, Tensor]      # (T, B, ...) detached, for logging


class WorldModel(nn.Module):

    def __init__(self, conf):
        super().__init__()
        self.kl_balance = conf.kl_balance
        self.iwae_samples = conf.iwae_samples
        self.encoder = MultiEncoder(conf)
        self.rssm = RSSM(conf, self.encoder.out_dim)
        self.decoder = MultiDecoder(conf, self.rssm.feature_dim)
        # the weight of each term of the loss (DreamerV2 eq. 2: β for the KL)
        self.weights = {'kl': conf.kl_weight, 'reward': conf.reward_weight, 'terminal': conf.terminal_weight}
        if self.decoder.image is not None:
            self.weights['image'] = conf.image_weight
        if self.decoder.vecobs is not None:
            self.weights['vecobs'] = conf.vecobs_weight
        init_weights_tf2(self)
        if conf.zero_init_heads:
            # DreamerV3: predict reward 0 at the start instead of a random ±1 that imagination
            # would take for action effects
            nn.init.zeros_(self.decoder.reward.model[-1].weight)
            nn.init.zeros_(self.decoder.reward.model[-1].bias)

    @property
    def feature_dim(self) -> int:
        return self.rssm.feature_dim

    def init_state(self, batch_size: int) -> State:
        return self.rssm.init_state(batch_size)

    def loss(self, obs: dict[str, Tensor], in_state: State, iwae_samples: int | None = None,
             do_image_pred: bool = False, noise: Tensor | None = None) -> WorldModelOutput:
        """obs: preprocessed tensors (T, B, ...): image, [vecobs], action, reward, terminal, reset.

        loss = mean over (T, B) of -logavgexp_I(-Σ weight·term) over the terms kl, image, vecobs,
        reward and terminal, which is the plain ELBO-style loss when iwae_samples == 1.
        """
        I = iwae_samples or self.iwae_samples
        T, B = obs['reward'].shape[:2]
        classes = self.rssm.classes
        embed = self.encoder(obs)                                             # (T, B, E)
        seq = self.rssm(embed, obs['action'], obs['reset'], in_state, iwae_samples=I, noise=noise)
        features = self.rssm.feature(seq.h, seq.z)                            # (T, B, I, F)
        assert features.shape[:3] == (T, B, I)
        terms, outputs = self.decoder.loss(features, obs, with_outputs=do_image_pred)

        kl = kl_balanced(seq.post, seq.prior, classes, self.kl_balance)       # {name: (T, B, I)}
        loss_kl = kl['loss']
        if I > 1:
            # IWAE needs the sampled KL, log q(z) - log p(z), so that samples can be weighted
            loss_kl = latent_log_prob(seq.post, seq.z, classes) - latent_log_prob(seq.prior, seq.z, classes)
        loss = -logavgexp(-self.weighted({'kl': loss_kl, **terms}), dim=2)    # (T, B)

        with torch.no_grad():
            kl_exact, entropy_prior, entropy_post = kl['kl'], kl['entropy_prior'], kl['entropy_post']
            metrics = {'loss_model': loss.mean(), 'loss_kl': kl_exact.mean(),
                       'entropy_prior': entropy_prior.mean(), 'entropy_post': entropy_post.mean()}
            metrics.update({f'loss_{name}': term.mean() for name, term in terms.items()})
            tensors = {'loss_kl': kl_exact.mean(2), 'entropy_prior': entropy_prior.mean(2),
                       'entropy_post': entropy_post.mean(2)}
            tensors.update({f'loss_{name}': term.detach().mean(2) for name, term in terms.items()})
            tensors.update(outputs)
            if do_image_pred:
                self._one_step_prediction(seq, obs, metrics, tensors)
        return WorldModelOutput(loss.mean(), {'kl': loss_kl, **terms}, features, (seq.h, seq.z), seq.out_state,
                                {k: v.detach() for k, v in metrics.items()}, tensors)

    def weighted(self, terms: dict[str, Tensor]) -> Tensor:
        """Σ weight·term over the loss terms, which must be exactly those that have a weight."""
        assert terms.keys() == self.weights.keys(), f'loss terms {sorted(terms)} but weights {sorted(self.weights)}'
        return sum(self.weights[name] * term for name, term in terms.items())

    def _one_step_prediction(self, seq, obs: dict[str, Tensor], metrics: dict, tensors: dict) -> None:
        """Decode from a prior sample instead of the posterior: how well the model predicts each
        observation before seeing it. Adds loss_*_pred metrics and *_pred tensors."""
        z_prior = sample_latent(seq.prior, self.rssm.classes)
        features = self.rssm.feature(seq.h, z_prior)                          # (T, B, I, F)
        terms, outputs = self.decoder.loss(features, obs, with_outputs=True)
        metrics.update({f'loss_{name}_pred': term.mean() for name, term in terms.items()})
        tensors.update({k.replace('_rec', '_pred'): v for k, v in outputs.items()})

    @torch.no_grad()
    def dream(self, obs: dict[str, Tensor], in_state: State, context: int = 1,
              actor: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
        """Open-loop prediction for the dream visualisation.

        The first `context` steps are observed (posterior); from then on the model only imagines
        (prior), fed with the recorded actions and resets of `obs`, or with actions from
        `actor(feature (B, F)) -> action (B, A)` when given. Returns, all (T, B, ...):
        image_pred (observation space: mean image, or class probabilities when categorical),
        reward_pred, terminal_pred, action (the actions used), and `observed` (bool, T).
        """
        T, B = obs['reward'].shape[:2]
        embed = self.encoder(obs)
        state = in_state
        features, actions = [], []
        for t in range(T):
            action, reset = obs['action'][t], obs['reset'][t]
            if t < context:
                _, state = self.rssm.observe_step(embed[t], action, reset, state)
            else:
                if actor is not None:
                    action = actor(features[-1]).to(action.dtype)
                _, state = self.rssm.imagine_step(action, state, reset=reset)
            features.append(self.rssm.feature(*state))
            actions.append(action)
        features = torch.stack(features)                                      # (T, B, F)
        out = {'reward_pred': self.decoder.reward_mean(features),
               'terminal_pred': self.decoder.terminal_prob(features),
               'action': torch.stack(actions).float(),
               'observed': torch.arange(T, device=features.device) < context}
        if self.decoder.image is not None:
            out['image_pred'] = self.decoder.image_prediction(self.decoder.image(features))
        return out

