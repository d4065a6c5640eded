"""Pump: one function run in a daemon thread whose exception is kept for the caller instead of lost.

Shared by the archive pipelines (copy loops) and quiesce (a container stop beside its exit poll)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Pump(threading.Thread):
    """Runs `fn` in a daemon thread; `error` keeps whatever it raised for the caller to re-raise."""

    def __init__(self, name: str, fn: Callable[[], None]):
        super().__init__(name=name, daemon=True)
        self._fn = fn
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._fn()
        except BaseException as exc:  # handed to the caller, never lost
            self.error = exc
