"""Numpy batches from the episode store -> model-ready tensors.

Input (time-major, as `pydreamer.data.BatchStream` yields them):
    image     uint8 (T, B, H, W, C) (or already (T, B, C, H, W)); categorical: integer (T, B, H, W)
    vecobs    (T, B, V)
    action    (T, B, A) one-hot, or integer indices (T, B)
    reward, terminal, reset   (T, B)
Output (torch, on `device`):
    image     float32 (T, B, C, H, W): x/255 - 0.5, or one-hot over image_channels categories
    vecobs    float32 (T, B, V);  action float32 (T, B, A) one-hot
    reward    float32 (T, B) through clip_rewards;  terminal float32 (T, B);  reset bool (T, B)
Other keys (e.g. env_id) are passed through as tensors.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def _to_device(x: np.ndarray, device) -> Tensor:
    """The array as a tensor on `device`; for CUDA through pinned memory, without waiting for the copy."""
    tensor = torch.as_tensor(np.asarray(x))
    if torch.device(device).type != 'cuda':
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def _image(x: np.ndarray, conf, device) -> Tensor:
    if conf.image_categorical:
        # (T, B, H, W) category indices -> (T, B, K, H, W) one-hot
        if x.ndim != 4:
            raise ValueError(f'A categorical image batch must be (T, B, H, W), got shape {x.shape}.')
        index = _to_device(x, device).long()
        return F.one_hot(index, conf.image_channels).permute(0, 1, 4, 2, 3).float()
    if x.ndim != 5:
        raise ValueError(f'An image batch must be (T, B, H, W, C), got shape {x.shape}.')
    image = _to_device(x, device)
    if image.shape[-1] == conf.image_channels and image.shape[2] != conf.image_channels:
        image = image.permute(0, 1, 4, 2, 3)                                  # HWC -> CHW
    if image.dtype == torch.uint8:
        return image.float() / 255.0 - 0.5
    return image.float()


def preprocess(batch: dict[str, np.ndarray], conf, device='cpu') -> dict[str, Tensor]:
    """A time-major numpy batch -> the tensors `Dreamer.train_step` expects (see module doc)."""
    T, B = batch['reward'].shape[:2]
    out: dict[str, Tensor] = {}
    for key, value in batch.items():
        if key == 'image':
            continue
        out[key] = _to_device(value, device)
    if 'image' in batch:
        out['image'] = _image(batch['image'], conf, device)
    if 'vecobs' in out:
        out['vecobs'] = out['vecobs'].float()
    action = out['action']
    if action.dim() == 2:
        action = F.one_hot(action.long(), conf.action_dim)
    if action.shape[-1] != conf.action_dim:
        raise ValueError(f'Actions have {action.shape[-1]} dimensions but action_dim is {conf.action_dim}.')
    out['action'] = action.float()
    out['reward'] = clip_rewards(out['reward'].float(), conf.clip_rewards)
    out['terminal'] = out['terminal'].float() if 'terminal' in out else torch.zeros(T, B, device=device)
    out['reset'] = out['reset'].bool() if 'reset' in out else torch.zeros(T, B, dtype=torch.bool, device=device)
    return out


def preprocess_step(obs: dict[str, np.ndarray], conf, device='cpu') -> dict[str, Tensor]:
    """One step of B environments (arrays (B, ...)) -> (1, B, ...) tensors for `Dreamer.policy`.

    Needs image and/or vecobs, action (the previous action, (B, A) one-hot or (B,) indices) and
    reset (B,); reward and terminal default to zeros.
    """
    B = np.asarray(obs['reset']).shape[0]
    batch = {k: np.asarray(v)[np.newaxis] for k, v in obs.items()}
    batch.setdefault('reward', np.zeros((1, B), np.float32))
    return preprocess(batch, conf, device)


def clip_rewards(reward: Tensor, mode: str) -> Tensor:
    """Reward squashing of the `clip_rewards` config key: none | tanh | log1p | sign."""
    if mode in ('', 'none'):
        return reward
    if mode == 'tanh':
        return torch.tanh(reward)
    if mode == 'log1p':
        # symmetric, so negative rewards below -1 stay finite (upstream's plain log1p gave NaN)
        return torch.sign(reward) * torch.log1p(reward.abs())
    if mode == 'sign':
        return torch.sign(reward)
    raise ValueError(f"clip_rewards must be none, tanh, log1p or sign, got {mode!r}.")
