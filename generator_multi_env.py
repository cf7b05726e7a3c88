"""Multi-environment dataset generator (one worker process of launch_generator_multi_env.py).

Plays the configured games, always the one with the fewest steps so far in this worker, with
random prefill and then `policy_main` (dqn: MinAtar DQN agents, atari_net: DQN_modern Atari
agents, each drawing one of the game's checkpoints per episode to mix skill levels). Every
stored step carries `env_id`, the index of its game in the config's env list, and one file may
hold consecutive episodes of different games. Metrics go to `agent/*` and `agent/<game>/*`.
"""
from __future__ import annotations

from pydreamer.config import Config


def run(conf: Config, run_id: str, worker: int) -> None:
    from pydreamer import generator  # in the worker only: the launcher does not need torch
    generator.run(conf, run_id, worker)
