"""Decoders from the model state (feature = [h, z]) and their losses.

Losses are pure functions of (output, target) returning one value per sample; the world model
weights and sums them. All losses are computed in float32.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pydreamer.models.common import MLP


class _DeconvDecoder(nn.Module):
    """model = [Linear -> (32d, 1, 1), transposed convolutions...] (no activation after the
    Linear, as DreamerV2)."""

    def __init__(self, in_dim: int, cnn_depth: int, deconv: list[nn.Module]):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(in_dim, 32 * cnn_depth), nn.Unflatten(-1, (32 * cnn_depth, 1, 1)),
                                   *deconv)

    def forward(self, features: Tensor) -> Tensor:
        # (..., F) -> (..., C, H, W)
        x = self.model[:2](features.flatten(0, -2))
        if x.device.type == 'cpu' and torch.is_autocast_enabled('cpu'):
            # oneDNN's bf16 transposed convolutions with few channels are slower than fp32 on CPU
            with torch.autocast('cpu', enabled=False):
                y = self.model[2:](x.float())
        else:
            y = self.model[2:](x)
        return y.unflatten(0, features.shape[:-1])


class ConvDecoder(_DeconvDecoder):
    """DreamerV2's image decoder: Linear -> (32d, 1, 1) -> conv-transpose k 5, 5, 6, 6 stride 2
    with ELU between, 1 -> 5 -> 13 -> 30 -> 64; channels 32d -> 4d -> 2d -> d -> C."""

    def __init__(self, in_dim: int, out_channels: int, cnn_depth: int):
        d = cnn_depth
        super().__init__(in_dim, d, [
            nn.ConvTranspose2d(32 * d, 4 * d, 5, 2), nn.ELU(),
            nn.ConvTranspose2d(4 * d, 2 * d, 5, 2), nn.ELU(),
            nn.ConvTranspose2d(2 * d, d, 6, 2), nn.ELU(),
            nn.ConvTranspose2d(d, out_channels, 6, 2)])


class MinAtarDecoder(_DeconvDecoder):
    """MinAtar image decoder: Linear -> (32d, 1, 1) -> conv-transpose k 2, 3, 4, 4 stride 1
    with ELU between, 1 -> 2 -> 4 -> 7 -> 10; channels 32d -> 4d -> 2d -> d -> C (logits when categorical)."""

    def __init__(self, in_dim: int, out_channels: int, cnn_depth: int):
        d = cnn_depth
        super().__init__(in_dim, d, [
            nn.ConvTranspose2d(32 * d, 4 * d, 2, 1), nn.ELU(),
            nn.ConvTranspose2d(4 * d, 2 * d, 3, 1), nn.ELU(),
            nn.ConvTranspose2d(2 * d, d, 4, 1), nn.ELU(),
            nn.ConvTranspose2d(d, out_channels, 4, 1)])


class DenseImageDecoder(nn.Module):
    """MLP -> (C, H, W), pydreamer's dense image decoder (hidden 400, LN, ELU)."""

    def __init__(self, in_dim: int, out_shape: tuple[int, int, int], hidden_layers: int, layer_norm: bool):
        super().__init__()
        self.out_shape = out_shape
        self.model = MLP(in_dim, out_shape[0] * out_shape[1] * out_shape[2], 400, max(1, hidden_layers), layer_norm)

    def forward(self, features: Tensor) -> Tensor:
        # (..., F) -> (..., C, H, W)
        return self.model(features).unflatten(-1, self.out_shape)


IMAGE_LOSSES = ('mse', 'categorical')


def image_loss(output: Tensor, target: Tensor, kind: str) -> Tensor:
    """Image reconstruction loss per sample. (..., C, H, W), (..., C, H, W) -> (...)

    mse: 0.5·Σ squared error (a unit-variance Gaussian without its constant); on a one-hot target
        this is the original project's MinAtar loss (ConvDecoderMinatar).
    categorical (target one-hot over C): Σ over pixels of the cross-entropy of softmax(output).
    """
    output = output.float()
    if kind == 'categorical':
        return -(target * output.log_softmax(-3)).sum((-1, -2, -3))
    return 0.5 * (output - target).square().sum((-1, -2, -3))


def mse_loss(output: Tensor, target: Tensor) -> Tensor:
    """0.5·squared error: -log N(target; output, σ²)·σ² with σ = 1/sqrt(2π), as pydreamer's DenseNormalDecoder."""
    return 0.5 * (output.float() - target).square()


def bernoulli_loss(logits: Tensor, target: Tensor) -> Tensor:
    """-log Bernoulli(target; sigmoid(logits)), per element."""
    return F.binary_cross_entropy_with_logits(logits.float(), target, reduction='none')


def image_decoder(conf, features_dim: int) -> nn.Module | None:
    kind = conf.image_decoder
    if kind == 'cnn':
        return ConvDecoder(features_dim, conf.image_channels, conf.cnn_depth)
    if kind == 'cnn_minatar':
        return MinAtarDecoder(features_dim, conf.image_channels, conf.cnn_depth)
    if kind == 'dense':
        return DenseImageDecoder(features_dim, (conf.image_channels, conf.image_size, conf.image_size),
                                 conf.image_decoder_layers, conf.layer_norm)
    if kind in ('', 'none'):
        return None
    raise ValueError(f"image_decoder must be cnn, cnn_minatar, dense or none, got {kind!r}.")


class MultiDecoder(nn.Module):
    """Image, vecobs, reward and terminal decoders with their weighted reconstruction loss."""

    def __init__(self, conf, features_dim: int):
        super().__init__()
        if conf.image_loss not in IMAGE_LOSSES:
            raise ValueError(f"image_loss must be {' or '.join(IMAGE_LOSSES)}, got {conf.image_loss!r}.")
        if conf.image_loss == 'categorical' and not conf.image_categorical:
            raise ValueError('image_loss categorical needs categorical images (image_categorical true).')
        self.image_loss = conf.image_loss
        self.image = image_decoder(conf, features_dim)
        self.vecobs = MLP(features_dim, conf.vecobs_size, 400, 4, conf.layer_norm) if conf.vecobs_size else None
        self.reward = MLP(features_dim, 1, conf.mlp_dim, conf.reward_decoder_layers, conf.layer_norm)
        self.terminal = MLP(features_dim, 1, conf.mlp_dim, conf.terminal_decoder_layers, conf.layer_norm)

    def image_prediction(self, output: Tensor) -> Tensor:
        """Decoder output -> an image in the preprocessed observation space: the mean (x/255 - 0.5
        for continuous images, the one-hot estimate under mse) or, under the categorical loss, the
        class probabilities over C."""
        output = output.float()
        return output.softmax(-3) if self.image_loss == 'categorical' else output

    def reward_mean(self, features: Tensor) -> Tensor:
        return self.reward(features).float()                # (...)

    def terminal_prob(self, features: Tensor) -> Tensor:
        return torch.sigmoid(self.terminal(features).float())  # (...)

    def loss(self, features: Tensor, obs: dict[str, Tensor], with_outputs: bool = False
             ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """features (T, B, I, F); obs tensors (T, B, ...).

        Returns the reconstruction terms {image, vecobs (those decoded), reward, terminal: (T, B, I)},
        unweighted, and, with `with_outputs`, the decoded outputs averaged over I: image_rec
        (T, B, C, H, W), reward_rec and terminal_rec (T, B), vecobs_rec (T, B, V).
        """
        assert features.dim() == 4, f'features must be (T, B, I, F), got {tuple(features.shape)}'
        terms: dict[str, Tensor] = {}
        outputs: dict[str, Tensor] = {}
        if self.image is not None:
            out = self.image(features)                                     # (T, B, I, C, H, W)
            terms['image'] = image_loss(out, obs['image'].unsqueeze(2), self.image_loss)
            if with_outputs:
                outputs['image_rec'] = self.image_prediction(out).mean(2)
        if self.vecobs is not None:
            out = self.vecobs(features)                                    # (T, B, I, V)
            terms['vecobs'] = mse_loss(out, obs['vecobs'].unsqueeze(2)).sum(-1)
            if with_outputs:
                outputs['vecobs_rec'] = out.float().mean(2)
        reward = self.reward(features)                                     # (T, B, I)
        terms['reward'] = mse_loss(reward, obs['reward'].unsqueeze(2))
        terminal = self.terminal(features)                                 # (T, B, I)
        terms['terminal'] = bernoulli_loss(terminal, obs['terminal'].unsqueeze(2).expand_as(terminal))
        if with_outputs:
            outputs['reward_rec'] = reward.float().mean(2)
            outputs['terminal_rec'] = torch.sigmoid(terminal.float()).mean(2)
        return terms, outputs
