"""The CUDA path: bf16 autocast chosen by `amp: auto`, fused optimizers, batches copied from
pinned memory without blocking, and a training step that agrees with the CPU's. The CUDA tests
are skipped on a machine without a CUDA device (bench/gpu_check.sh runs them on one)."""
import copy

import numpy as np
import pytest
import torch

from pydreamer.config import build_config
from pydreamer.models.dreamer import Dreamer, amp_enabled
from pydreamer.preprocess import preprocess
from pydreamer.train_step import init_optimizers, train_step

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason='no CUDA device')


def _batch(conf, T=6, B=3, seed=0):
    rng = np.random.default_rng(seed)
    return {'image': rng.integers(0, conf.image_channels, (T, B, 10, 10)).astype(np.uint8),
            'action': np.eye(conf.action_dim, dtype=np.float32)[rng.integers(0, conf.action_dim, (T, B))],
            'reward': rng.normal(size=(T, B)).astype(np.float32), 'terminal': np.zeros((T, B), bool),
            'reset': np.eye(T, B, dtype=bool)}


def test_amp_auto_means_bf16_on_cpu_and_on_cuda_devices_with_bf16():
    assert amp_enabled('auto', 'cpu') and not amp_enabled('false', 'cpu') and amp_enabled('true', 'cuda')
    assert amp_enabled('auto', 'cuda') == (CUDA and torch.cuda.is_bf16_supported())


@needs_cuda
def test_batches_reach_the_device_from_pinned_memory():
    conf = build_config(['defaults', 'minatar', 'debug'])
    obs = preprocess(_batch(conf), conf, 'cuda')
    assert all(t.device.type == 'cuda' for t in obs.values())
    assert obs['image'].shape == (6, 3, conf.image_channels, 10, 10)


@needs_cuda
def test_the_cuda_world_model_loss_agrees_with_the_cpu_one_and_optimizers_are_fused():
    conf = build_config(['defaults', 'minatar', 'debug']).replace(amp='false')
    torch.manual_seed(0)
    cpu = Dreamer(conf)
    gpu = copy.deepcopy(cpu).cuda()
    batch = _batch(conf)
    noise = torch.rand(6, 3, conf.stoch_dim, 1)  # the same latent samples on both devices
    results = {}
    for name, model, device in (('cpu', cpu, 'cpu'), ('cuda', gpu, 'cuda')):
        assert all(opt.defaults['fused'] for opt in init_optimizers(model, conf).values())
        out = model.wm.loss(preprocess(batch, conf, device), model.init_state(3), noise=noise.to(device))
        results[name] = {k: float(v) for k, v in out.metrics.items()}
    for key in ('loss_model', 'loss_image', 'loss_reward', 'loss_kl'):
        assert results['cuda'][key] == pytest.approx(results['cpu'][key], rel=1e-3, abs=1e-4), key


@needs_cuda
def test_a_cuda_training_step_is_finite_with_bf16_autocast():
    conf = build_config(['defaults', 'minatar', 'debug'])
    model = Dreamer(conf).cuda()
    _, metrics = train_step(model, preprocess(_batch(conf), conf, 'cuda'), model.init_state(3),
                            init_optimizers(model, conf))
    assert metrics['nonfinite_skipped'] == 0 and all(torch.isfinite(v) for v in metrics.values())
