"""The whole from-scratch job on this machine: learner steps/s inside launch.py while its generator
keeps collecting with the network policy, generator agent steps/s, and peak memory per process.

    .venv/bin/python bench/launch.py [--configs defaults minatar] [--n_steps 60] [--prefill 5000]
        [-- --limit_step_ratio 20 ...]      # further launch.py overrides

Runs the real launch.py in a temporary folder (embedded mlflow store), samples the RSS of every
process of the job twice a second, then reads the run's metrics back from mlflow.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_mb(pid: int) -> float:
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    try:
        with open(f'/proc/{pid}/task/{pid}/children') as f:
            kids = [int(p) for p in f.read().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in children(k)]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--configs', nargs='+', default=['defaults', 'minatar'])
    parser.add_argument('--n_steps', type=int, default=60)
    parser.add_argument('--prefill', type=int, default=5000)
    parser.add_argument('overrides', nargs='*', help='launch.py config overrides, after --')
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MLFLOW_TRACKING_URI=f'sqlite:///{tmp}/mlflow.db')
        log_path = Path(tmp) / 'launch.log'
        command = [sys.executable, str(ROOT / 'launch.py'), '--configs', *args.configs,
                   '--n_steps', str(args.n_steps), '--generator_prefill_steps', str(args.prefill),
                   '--log_interval', '10', '--save_interval', '10', '--policy_reload_interval', '10', *args.overrides]
        peak: dict[int, float] = defaultdict(float)
        peak_total = 0.0
        start = time.time()
        with open(log_path, 'w') as log:
            proc = subprocess.Popen(command, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
            while proc.poll() is None:
                pids = [proc.pid] + children(proc.pid)
                sizes = {p: rss_mb(p) for p in pids}
                for p, size in sizes.items():
                    peak[p] = max(peak[p], size)
                peak_total = max(peak_total, sum(sizes.values()))
                time.sleep(0.5)
        wall = time.time() - start
        text = log_path.read_text()
        if proc.returncode != 0:
            raise SystemExit(f'launch.py failed (exit {proc.returncode}):\n{text[-3000:]}')
        names = {int(pid): name for name, pid in re.findall(r'Started (\S+) \(pid (\d+)', text)}
        names[proc.pid] = 'launcher'

        os.environ['MLFLOW_TRACKING_URI'] = env['MLFLOW_TRACKING_URI']
        from pydreamer.tracking import client
        c = client()
        run = c.search_runs([e.experiment_id for e in c.search_experiments()])[0]
        fps = [m.value for m in c.get_metric_history(run.info.run_id, 'train/fps')]
        network_steps = {m.step for m in c.get_metric_history(run.info.run_id, 'agent/policy_learner_step')
                         if m.value > 0}
        agent_fps = [m.value for m in c.get_metric_history(run.info.run_id, 'agent/fps') if m.step in network_steps]
        print(f'config {" ".join(args.configs + args.overrides)}, {args.n_steps} learner steps, '
              f'prefill {args.prefill}: wall {wall:.0f} s')
        print(f'learner steps/s inside launch.py (mean of logged train/fps after the first log): '
              f'{sum(fps[1:]) / max(1, len(fps) - 1):.3f}  (all: {", ".join(f"{f:.2f}" for f in fps)})')
        print(f'generator agent steps/s with the network policy (mean over its {len(agent_fps)} episodes): '
              f'{sum(agent_fps) / max(1, len(agent_fps)):.0f}')
        print(f'{"process":14} {"peak RSS MB":>12}')
        for pid, size in sorted(peak.items(), key=lambda kv: names.get(kv[0], 'z')):
            print(f'{names.get(pid, str(pid)):14} {size:>12.0f}')
        print(f'{"all (at once)":14} {peak_total:>12.0f}')


if __name__ == '__main__':
    main(sys.argv[1:])
