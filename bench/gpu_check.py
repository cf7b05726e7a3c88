"""The learner on a GPU, without mlflow: seconds per step of the `minatar` and `atari` configs
(full step and world-model-only, bf16 autocast as `amp: auto` picks it, peak GPU memory), then a
short real training run (random-policy MinAtar Breakout collected here, the full step for
--train-steps steps) whose world-model loss must fall. Prints one table; exit 1 if the loss did not
fall. Run through bench/gpu_check.sh on the GPU machine; on a CPU it measures the CPU.

    python bench/gpu_check.py [--steps 10] [--train-steps 300] [--device cuda]
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from pydreamer.config import build_config
from pydreamer.envs import make_env
from pydreamer.episodes import first_row, next_row
from pydreamer.models.dreamer import Dreamer, amp_enabled
from pydreamer.preprocess import preprocess
from pydreamer.train_step import init_optimizers, train_step


def synthetic_batch(conf, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A (T, B) batch of the config's observation shape (values do not change the step's cost)."""
    T, B = conf.batch_length, conf.batch_size
    if conf.image_categorical:
        image = rng.integers(0, conf.image_channels, (T, B, conf.image_size, conf.image_size)).astype(np.uint8)
    else:
        image = rng.integers(0, 256, (T, B, conf.image_size, conf.image_size, conf.image_channels)).astype(np.uint8)
    return {'image': image, 'action': np.eye(conf.action_dim, dtype=np.float32)[rng.integers(0, conf.action_dim, (T, B))],
            'reward': rng.normal(size=(T, B)).astype(np.float32), 'terminal': np.zeros((T, B), bool),
            'reset': np.zeros((T, B), bool)}


def step_time(conf, device: str, steps: int, wm_only: bool) -> tuple[float, float]:
    """Mean seconds per learner step after two warm-up steps, and peak GPU memory in GB."""
    torch.manual_seed(0)
    model = Dreamer(conf, wm_only=wm_only).to(device)
    optimizers = init_optimizers(model, conf)
    rng = np.random.default_rng(0)
    state = model.init_state(conf.batch_size)
    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 2):
        if i == 2:
            synchronize(device)
            start = time.perf_counter()
        state, _ = train_step(model, preprocess(synthetic_batch(conf, rng), conf, device), state, optimizers)
    synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 1e9 if device.startswith('cuda') else float('nan')
    return seconds, peak


def synchronize(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def breakout_data(steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`steps` step records of a random policy on MinAtar Breakout, episodes back to back."""
    env, rng, rows = make_env('MinAtar/Breakout-v0', seed=seed), np.random.default_rng(seed), []
    while len(rows) < steps:
        rows.append(first_row(env.reset(), env.action_dim))
        done = False
        while not done and len(rows) < steps:
            action = int(rng.integers(env.action_dim))
            obs, reward, terminated, truncated = env.step(action)
            rows.append(next_row(obs, action, env.action_dim, reward, terminated))
            done = terminated or truncated
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def real_training(conf, device: str, train_steps: int) -> tuple[float, float, float]:
    """World-model loss over the first and the last tenth of `train_steps` full steps on random
    windows of real Breakout data, and seconds per step."""
    data = breakout_data(20_000)
    rng = np.random.default_rng(1)
    torch.manual_seed(0)
    model = Dreamer(conf).to(device)
    optimizers = init_optimizers(model, conf)
    T, B = conf.batch_length, conf.batch_size
    losses, start = [], time.perf_counter()
    for _ in range(train_steps):
        starts = rng.integers(0, len(data['reward']) - T, B)
        batch = {k: np.stack([v[s:s + T] for s in starts], 1) for k, v in data.items()}   # (T, B, ...)
        batch['reset'][0] = True
        _, metrics = train_step(model, preprocess(batch, conf, device), model.init_state(B), optimizers)
        losses.append(float(metrics['loss_model']))
    synchronize(device)
    tenth = max(1, train_steps // 10)
    return float(np.mean(losses[:tenth])), float(np.mean(losses[-tenth:])), (time.perf_counter() - start) / train_steps


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--steps', type=int, default=10, help='timed learner steps per row')
    parser.add_argument('--train-steps', type=int, default=300, help='steps of the real training run')
    args = parser.parse_args(argv)
    device = args.device
    name = torch.cuda.get_device_name(device) if device.startswith('cuda') else 'cpu'
    print(f'device {device} ({name}), torch {torch.__version__}')
    print(f'{"config":10} {"step":9} {"amp":6} {"B x T":7} {"s/step":>8} {"peak GB":>8}')
    for preset in ('minatar', 'atari'):
        conf = build_config(['defaults', preset])
        amp = 'bf16' if amp_enabled(conf.amp, torch.device(device).type) else 'fp32'
        for kind, wm_only in (('full', False), ('wm-only', True)):
            seconds, peak = step_time(conf, device, args.steps, wm_only)
            print(f'{preset:10} {kind:9} {amp:6} {conf.batch_size}x{conf.batch_length:<4} {seconds:8.3f} {peak:8.2f}',
                  flush=True)
    first, last, seconds = real_training(build_config(['defaults', 'minatar']), device, args.train_steps)
    fell = last < 0.8 * first
    print(f'real training, MinAtar Breakout random data, {args.train_steps} full steps: loss_model '
          f'{first:.2f} -> {last:.2f} ({"falls" if fell else "DOES NOT FALL"}), {seconds:.3f} s/step')
    return 0 if fell else 1


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
