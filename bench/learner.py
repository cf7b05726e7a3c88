"""Learner speed and memory on this machine: seconds per training step, split into data loading,
world model and imagination + actor-critic, for the `minatar` and `atari` configs, in fp32 and
with bf16 autocast.

    .venv/bin/python bench/learner.py [--configs minatar atari minatar+minatar_cpu] [--steps 5] [--threads 2]

Data comes from a real random-policy episode run made on the fly in a temporary mlflow store,
read through the same BatchStream as the learner. Prints one table row per config and precision,
with the step's matrix-product work (GFLOP, forward and backward, counted by torch) and the
time that work alone takes at this machine's measured matrix-product throughput: the floor
below which no implementation of the same model and batch can go.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_data(conf, env_id: str, steps: int) -> str:
    from pydreamer import generator, tracking
    data_conf = conf.replace(env_id=env_id, n_env_steps=steps, generator_prefill_steps=steps,
                             generator_workers=1, split_fraction=0.0, policy_main='random')
    run_id = tracking.start_run(data_conf, 'bench-data')
    generator.run(data_conf, run_id, 0)
    return run_id


def matmul_gflops(amp: bool) -> float:
    """Measured throughput of the heads' dominant product, (23040 x 400) @ (400 x 400)."""
    import torch
    dtype = torch.bfloat16 if amp else torch.float32
    a, b = torch.randn(23040, 400, dtype=dtype), torch.randn(400, 400, dtype=dtype)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    return 20 * 2 * 23040 * 400 * 400 / (time.perf_counter() - t0) / 1e9


def time_steps(conf, run_id: str, steps: int, wm_only: bool) -> dict[str, float]:
    """Mean data and train seconds per step over `steps` steps, after one untimed step whose
    matrix-product work is counted ('gflop'); 'params' is the model's parameter count."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from pydreamer.data import BatchStream, EpisodeIndex
    from pydreamer.models.dreamer import Dreamer
    from pydreamer.preprocess import preprocess
    from pydreamer.train_step import init_optimizers, train_step
    torch.manual_seed(0)
    model = Dreamer(conf, wm_only=wm_only)
    optimizers = init_optimizers(model, conf)
    index = EpisodeIndex(run_id, 'episodes', conf.buffer_size, 3600)
    index.refresh(force=True)
    stream = BatchStream(index, conf.batch_size, conf.batch_length, conf.reset_interval, True, seed=0)
    state = model.init_state(conf.batch_size)
    totals = {'data': 0.0, 'train': 0.0}
    with FlopCounterMode(display=False) as counter:  # the first step warms up kernels and is not timed
        state, _ = train_step(model, preprocess(stream.next(), conf), state, optimizers)
    totals['gflop'] = counter.get_total_flops() / 1e9
    for _ in range(steps):
        t0 = time.perf_counter()
        obs = preprocess(stream.next(), conf)
        t1 = time.perf_counter()
        state, _ = train_step(model, obs, state, optimizers)
        totals['data'] += (t1 - t0) / steps
        totals['train'] += (time.perf_counter() - t1) / steps
    index.close()
    totals['params'] = sum(p.numel() for p in model.parameters())
    return totals


def parse_override(text: str) -> tuple[str, object]:
    import yaml
    key, _, value = text.partition('=')
    return key, yaml.safe_load(value)


def main(argv: list[str]) -> None:
    from pydreamer.launching.processes import MALLOC_ENV
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        # the learner runs with these allocator settings (launch.py sets them for its children);
        # glibc reads them at process start only
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--configs', nargs='+', default=['minatar', 'atari'])
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--amp', nargs='+', default=['false', 'true'])
    parser.add_argument('--set', nargs='+', default=[], metavar='KEY=VALUE',
                        help='config overrides applied after the sections, e.g. cnn_depth=32')
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    from pydreamer.config import build_config
    from pydreamer.tracking import setup_tracking
    envs = {'minatar': 'MinAtar/Breakout-v0', 'atari': 'Atari-Pong'}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ['MLFLOW_TRACKING_URI'] = f'sqlite:///{tmp}/mlflow.db'
        os.chdir(tmp)
        setup_tracking()
        print(f'{"config":20} {"amp":5} {"B x T":7} {"params":>10} {"data s":>7} {"wm s/step":>10} '
              f'{"full s/step":>11} {"imag+ac s":>10} {"steps/s":>8} {"GFLOP wm":>9} {"GFLOP full":>10} '
              f'{"matmul GFLOP/s":>14} {"floor wm s":>10} {"floor full s":>12}')
        for name in args.configs:
            sections = name.split('+')  # presets applied left to right on `defaults`
            conf = build_config(['defaults', *sections], dict(parse_override(o) for o in args.set))
            run_id = make_data(conf, envs[sections[0]], max(3000, conf.batch_size * conf.batch_length * 2))
            for amp in args.amp:
                c = conf.replace(amp=amp)
                wm = time_steps(c, run_id, args.steps, wm_only=True)
                full = time_steps(c, run_id, args.steps, wm_only=False)
                flop_wm, flop_full = wm['gflop'], full['gflop']
                speed = matmul_gflops(amp == 'true')
                print(f'{name:20} {amp:5} {conf.batch_size}x{conf.batch_length:<4} {full["params"]:>10,} '
                      f'{full["data"]:>7.3f} {wm["train"]:>10.3f} {full["train"]:>11.3f} '
                      f'{full["train"] - wm["train"]:>10.3f} {1 / (full["train"] + full["data"]):>8.2f} '
                      f'{flop_wm:>9.1f} {flop_full:>10.1f} {speed:>14.0f} {flop_wm / speed:>10.3f} '
                      f'{flop_full / speed:>12.3f}', flush=True)
    print(f'peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB')


if __name__ == '__main__':
    main(sys.argv[1:])
