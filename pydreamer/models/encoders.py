"""Observation encoders: images (64×64 CNN, MinAtar 10×10 CNN, dense) and vector observations."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from pydreamer.models.common import MLP, norm_layer


class ConvEncoder(nn.Module):
    """4 conv layers with ELU, channels C -> d -> 2d -> 4d -> 8d, ending at 2×2; out 8d·2·2 = 32d.

    DreamerV2's 64×64 encoder uses kernel 4 stride 2 (64 -> 31 -> 14 -> 6 -> 2); the MinAtar
    encoder kernel 3 stride 1 (10 -> 8 -> 6 -> 4 -> 2).
    """

    def __init__(self, in_channels: int, cnn_depth: int, kernel: int, stride: int):
        super().__init__()
        d = cnn_depth
        self.model = nn.Sequential(
            nn.Conv2d(in_channels, d, kernel, stride), nn.ELU(),
            nn.Conv2d(d, 2 * d, kernel, stride), nn.ELU(),
            nn.Conv2d(2 * d, 4 * d, kernel, stride), nn.ELU(),
            nn.Conv2d(4 * d, 8 * d, kernel, stride), nn.ELU(),
            nn.Flatten())
        self.out_dim = 32 * d

    def forward(self, image: Tensor) -> Tensor:
        # (..., C, H, W) -> (..., 32d)
        return self.model(image.flatten(0, -4)).unflatten(0, image.shape[:-3])


class DenseImageEncoder(nn.Module):
    """Flattened image -> max(1, hidden_layers) × [Linear 400, LN, ELU] -> Linear 256 -> ELU (pydreamer's DenseEncoder)."""

    def __init__(self, in_dim: int, hidden_layers: int, layer_norm: bool, out_dim: int = 256, hidden_dim: int = 400):
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(max(1, hidden_layers)):
            layers += [nn.Linear(dim, hidden_dim), norm_layer(hidden_dim, layer_norm), nn.ELU()]
            dim = hidden_dim
        layers += [nn.Linear(dim, out_dim), nn.ELU()]
        self.model = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, image: Tensor) -> Tensor:
        # (..., C, H, W) -> (..., 256)
        return self.model(image.flatten(-3))


class MultiEncoder(nn.Module):
    """Embeds an observation dict: the image encoder chosen by `image_encoder` and, when
    vecobs_size > 0, an MLP for `vecobs` (2 × 400 hidden -> 256); embeddings are concatenated."""

    def __init__(self, conf):
        super().__init__()
        kind = conf.image_encoder
        if kind == 'cnn':
            self.image = ConvEncoder(conf.image_channels, conf.cnn_depth, kernel=4, stride=2)
        elif kind == 'cnn_minatar':
            self.image = ConvEncoder(conf.image_channels, conf.cnn_depth, kernel=3, stride=1)
        elif kind == 'dense':
            self.image = DenseImageEncoder(conf.image_channels * conf.image_size ** 2,
                                           conf.image_encoder_layers, conf.layer_norm)
        elif kind in ('', 'none'):
            self.image = None
        else:
            raise ValueError(f"image_encoder must be cnn, cnn_minatar, dense or none, got {kind!r}.")
        self.vecobs = MLP(conf.vecobs_size, 256, 400, 2, conf.layer_norm) if conf.vecobs_size else None
        if self.image is None and self.vecobs is None:
            raise ValueError('The world model needs an observation: set image_encoder or vecobs_size.')
        self.out_dim = (self.image.out_dim if self.image else 0) + (256 if self.vecobs else 0)

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        # image (T, B, C, H, W), vecobs (T, B, V) -> embed (T, B, E)
        embeds = []
        if self.image is not None:
            embeds.append(self.image(obs['image']))
        if self.vecobs is not None:
            embeds.append(self.vecobs(obs['vecobs']))
        embed = embeds[0] if len(embeds) == 1 else torch.cat(embeds, -1)
        assert embed.shape[-1] == self.out_dim
        return embed
