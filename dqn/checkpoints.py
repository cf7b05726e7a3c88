"""The checkpoint files of a DQN agent folder, found without torch (launchers check folders with it)."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable

MODEL_FILE = re.compile(r'model_(\d+)\.pt')


def find_checkpoints(dirs_or_files: str | Path | Iterable[str | Path]) -> list[Path]:
    """The `model_*.pt` files of each folder (in step order) and each file given directly."""
    if isinstance(dirs_or_files, (str, Path)):
        dirs_or_files = [dirs_or_files]
    paths = []
    for item in map(Path, dirs_or_files):
        if item.is_file():
            paths.append(item)
        elif item.is_dir():
            found = sorted(item.glob('model_*.pt'), key=_step_order)
            if not found:
                raise FileNotFoundError(f'DQN checkpoint folder {item} holds no model_*.pt files; '
                                        f'`python dqn/train_agents.py` writes them.')
            paths.extend(found)
        else:
            raise FileNotFoundError(f'DQN checkpoint folder or file {item} does not exist; '
                                    f'`python dqn/train_agents.py` writes it.')
    if not paths:
        raise ValueError('DQNPolicy needs at least one checkpoint folder or file, got none.')
    return paths


def _step_order(path: Path) -> tuple[float, str]:
    match = MODEL_FILE.fullmatch(path.name)
    return (int(match[1]) if match else math.inf), path.name
