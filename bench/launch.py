"""The whole from-scratch job on this machine: learner steps/s inside launch.py while its generator
keeps collecting with the network policy, generator agent steps/s, and peak memory per process.

    .venv/bin/python bench/launch.py [--configs defaults minatar] [--n_steps 60] [--prefill 5000]
        [-- --limit_step_ratio 20 ...]      # further launch.py overrides

Runs the real launch.py in a temporary folder (embedded mlflow store), samples the memory of every
process of the job twice a second, then reads the run's metrics back from mlflow. Memory is given
as RSS (each process counts the shared libraries it maps, e.g. libtorch, in full) and as PSS (shared
pages divided among the processes that map them), whose sum is what the job takes from the machine.
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


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of a process in MB; zeros once it has gone."""
    values = {}
    try:
        with open(f'/proc/{pid}/smaps_rollup') as f:
            for line in f:
                key, _, rest = line.partition(':')
                if key in ('Rss', 'Pss'):
                    values[key] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return values.get('Rss', 0.0), values.get('Pss', 0.0)


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
        peak_rss: dict[int, float] = defaultdict(float)
        peak_pss: dict[int, float] = defaultdict(float)
        peak_total_rss = peak_total_pss = 0.0
        start = time.time()
        with open(log_path, 'w') as log:
            proc = subprocess.Popen(command, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
            while proc.poll() is None:
                pids = [proc.pid] + children(proc.pid)
                sizes = {p: memory_mb(p) for p in pids}
                for p, (rss, pss) in sizes.items():
                    peak_rss[p] = max(peak_rss[p], rss)
                    peak_pss[p] = max(peak_pss[p], pss)
                peak_total_rss = max(peak_total_rss, sum(rss for rss, _ in sizes.values()))
                peak_total_pss = max(peak_total_pss, sum(pss for _, pss in sizes.values()))
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
        print(f'{"process":14} {"peak RSS MB":>12} {"peak PSS MB":>12}')
        for pid in sorted(peak_rss, key=lambda p: names.get(p, 'z')):
            print(f'{names.get(pid, str(pid)):14} {peak_rss[pid]:>12.0f} {peak_pss[pid]:>12.0f}')
        print(f'{"all (at once)":14} {peak_total_rss:>12.0f} {peak_total_pss:>12.0f}')


if __name__ == '__main__':
    main(sys.argv[1:])
