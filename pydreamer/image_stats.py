"""What an image loss means: the loss of the best static image, and how many objects are right.

A world model that has not yet learnt to encode observations still drives its image loss down
to the loss of predicting every pixel from its marginal over the data (the bricks of Breakout,
the background): the posterior carries no information and imagination cannot tell actions
apart. `ImageFloor` measures that static-marginal floor on the batches the learner sees, so a
plateau on it is visible next to `train/loss_image`. `pixel_accuracy` scores categorical
predictions on a chosen set of pixels: those that hold an object (category > 0; in Breakout the
bricks make most of them, so a static prediction already gets ~90%), and those whose category
changed since the previous frame (the ball, the paddle, enemies: what a static prediction misses).
"""
from __future__ import annotations

import torch
from torch import Tensor


class ImageFloor:
    """Running per-element moments of preprocessed images (T, B, C, H, W) and the loss of the best
    static prediction under them:

        mse          0.5 · Σ_(c,h,w) Var[x]              (predicting E[x] everywhere)
        categorical  Σ_(h,w) H(p_(h,w)), p = E[one-hot]   (predicting each pixel's marginal)
    """

    def __init__(self):
        self.count = 0
        self.mean: Tensor | None = None      # (C, H, W) E[x]
        self.mean_sq: Tensor | None = None   # (C, H, W) E[x²]

    def update(self, image: Tensor) -> None:
        x = image.detach().float().flatten(0, -4)                           # (N, C, H, W)
        n = x.shape[0]
        if self.mean is None:
            self.mean, self.mean_sq = torch.zeros_like(x[0]), torch.zeros_like(x[0])
        w = n / (self.count + n)
        self.mean += w * (x.mean(0) - self.mean)
        self.mean_sq += w * (x.square().mean(0) - self.mean_sq)
        self.count += n

    def value(self, kind: str) -> float:
        if self.mean is None:
            return float('nan')
        if kind == 'categorical':
            p = self.mean.clamp_min(1e-12)
            return float(-(self.mean * p.log()).sum())
        return float(0.5 * (self.mean_sq - self.mean.square()).clamp_min(0).sum())


def object_pixels(target: Tensor) -> Tensor:
    """target (T, B, C, H, W) one-hot -> (T, B, H, W) bool: the pixel holds an object."""
    return target.argmax(-3) > 0


def changed_pixels(target: Tensor, reset: Tensor) -> Tensor:
    """target (T, B, C, H, W) one-hot, reset (T, B) -> (T, B, H, W) bool: the pixel's category
    differs from the previous frame of the same episode (never on the first row or after a reset)."""
    truth = target.argmax(-3)
    changed = torch.zeros_like(truth, dtype=torch.bool)
    changed[1:] = (truth[1:] != truth[:-1]) & ~reset[1:, :, None, None]
    return changed


def pixel_accuracy(prediction: Tensor, target: Tensor, mask: Tensor) -> tuple[int, int]:
    """prediction (..., C, H, W) class scores or one-hot estimates, target (..., C, H, W) one-hot,
    mask (..., H, W). Returns (masked pixels whose class is predicted right, masked pixels)."""
    correct = (prediction.argmax(-3) == target.argmax(-3)) & mask
    return int(correct.sum()), int(mask.sum())
