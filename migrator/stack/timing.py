"""Step timings: seconds per named step, rounded to milliseconds, as deploy, move and the agent report them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class StepTimer:
    """Records into `durations` (a result's own dict, or a new one): `lap(name)` the time since the timer
    was made or since its previous lap; `with step(name):` the time the block takes, exception or not.
    A name timed again adds up."""

    def __init__(self, durations: dict[str, float] | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.durations = {} if durations is None else durations
        self.clock = clock
        self.last_lap = clock()

    def lap(self, name: str) -> None:
        now = self.clock()
        self._add(name, self.last_lap, now)
        self.last_lap = now

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        begin = self.clock()
        try:
            yield
        finally:
            self._add(name, begin, self.clock())

    def _add(self, name: str, begin: float, end: float) -> None:
        self.durations[name] = round(self.durations.get(name, 0.0) + end - begin, 3)
