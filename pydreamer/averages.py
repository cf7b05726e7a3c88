"""What a training loop reports between two logs: running means of its metrics and timers, and
whether a step is one of an interval's."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator, Mapping


class Averages:
    """Means of the values added since the last `pop`, per name."""

    def __init__(self):
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def add(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self._sums[key] += float(value)
            self._counts[key] += 1

    @contextmanager
    def timer(self, name: str) -> Iterator[None]:
        """Adds the seconds the block takes as `name`."""
        start = time.perf_counter()
        yield
        self.add({name: time.perf_counter() - start})

    def pop(self, prefix: str = '') -> dict[str, float]:
        """The means (names prefixed), and a fresh start."""
        means = {f'{prefix}{key}': total / self._counts[key] for key, total in self._sums.items()}
        self._sums.clear()
        self._counts.clear()
        return means


def every(step: int, interval: int) -> bool:
    """Whether `step` is one of the interval's steps; an interval of 0 means never."""
    return interval > 0 and step % interval == 0
