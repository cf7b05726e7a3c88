"""Generator throughput and storage: agent steps/s per data policy and env, and bytes per stored step.

    .venv/bin/python bench/generator.py [--steps 3000] [--threads 1]

Each row runs the real generator process function (env, policy, episode files, uploads, metrics)
on a temporary mlflow store. The `network` policy plays an untrained Dreamer of the env's config
from a checkpoint saved into the run first, exactly as it would load the learner's checkpoint.
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


def stored_bytes(run_id: str) -> tuple[int, int]:
    from pydreamer.artifacts import ArtifactFolder
    from pydreamer.tracking import client
    total_bytes = total_steps = 0
    for top in ('episodes', 'episodes_eval'):
        for sub in ArtifactFolder(run_id, top).list_subfolders():
            for info in client().list_artifacts(run_id, sub):
                total_bytes += info.file_size or 0
            total_steps += sum(f.steps for _, f in ArtifactFolder(run_id, sub).list())
    return total_bytes, total_steps


def bench(sections: list[str], env_id: str, policy: str, steps: int) -> tuple[float, float]:
    import torch
    from pydreamer import generator, tracking
    from pydreamer.checkpoint import RunCheckpoints, save_checkpoint
    from pydreamer.config import build_config
    from pydreamer.models.dreamer import Dreamer
    from pydreamer.train_step import init_optimizers
    conf = build_config(['defaults', *sections]).replace(
        env_id=env_id, n_env_steps=steps, generator_workers=1, generator_prefill_steps=0, policy_main=policy,
        metrics_interval=5)
    run_id = tracking.start_run(conf, 'bench-generator')
    if policy == 'network':
        with tempfile.TemporaryDirectory() as tmp:
            model = Dreamer(conf)
            path = Path(tmp) / 'latest.pt'
            save_checkpoint(path, 1, model, init_optimizers(model, conf), conf.to_dict())
            RunCheckpoints(run_id).upload(path)
        torch.manual_seed(0)
    start = time.perf_counter()
    generator.run(conf, run_id, 0)
    elapsed = time.perf_counter() - start
    size, stored = stored_bytes(run_id)
    return stored / elapsed, size / max(1, stored)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--steps', type=int, default=3000)
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    from pydreamer.tracking import setup_tracking
    rows = [(['minatar'], 'MinAtar/Breakout-v0', 'random'), (['minatar'], 'MinAtar/Breakout-v0', 'network'),
            (['minatar'], 'MinAtar/SpaceInvaders-v0', 'random'), (['minatar'], 'MinAtar/SpaceInvaders-v0', 'network'),
            (['atari'], 'Atari-Pong', 'random'), (['atari'], 'Atari-Pong', 'network')]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ['MLFLOW_TRACKING_URI'] = f'sqlite:///{tmp}/mlflow.db'
        os.chdir(tmp)
        setup_tracking()
        print(f'{"env":26} {"policy":8} {"agent steps/s":>14} {"bytes/step":>11}')
        for sections, env_id, policy in rows:
            steps = args.steps if policy == 'random' or env_id.startswith('MinAtar') else args.steps // 3
            fps, per_step = bench(sections, env_id, policy, steps)
            print(f'{env_id:26} {policy:8} {fps:>14.0f} {per_step:>11.1f}', flush=True)
    print(f'peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB')


if __name__ == '__main__':
    main(sys.argv[1:])
