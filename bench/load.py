"""The write load of the downtime benchmark: the volume's "database" changing while phase 1 runs.

Changes ~1% of the data set's bytes, spread evenly over the expected phase-1 window: rewrites 1% of the
small files in place (new content, same size class) and appends records to one big database file. It
models the writes of the service that owns the volume, so it stops as soon as that service stops
answering its health port (the service is being quiesced: its own writes end there too), when its byte
budget is spent, or when the backup ends — whichever comes first. Seeded, so every run makes the same
changes in the same order.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from pathlib import Path

STEP_S = 0.1  # one batch of changes per step
PROBE_TIMEOUT_S = 0.2
SMALL_SHARE = 0.01  # fraction of the small files rewritten
APPEND_CHUNK = 128 * 64  # appended in whole 128-byte records


class Load(threading.Thread):
    def __init__(self, root: Path, small: list[str], big: str, budget_bytes: int, spread_s: float, port: int,
                 seed: int = 7):
        super().__init__(name="bench-load", daemon=True)
        self.root = Path(root)
        self.rng = random.Random(seed)
        self.small = self.rng.sample(small, max(1, int(len(small) * SMALL_SHARE)))
        self.big = self.root / big
        self.budget = budget_bytes
        self.spread_s = max(spread_s, STEP_S)
        self.port = port
        self.halt = threading.Event()
        self.files_rewritten = 0
        self.bytes_written = 0
        self.appended = 0
        self.active_s = 0.0
        self.stopped_by = "budget"
        self.error: BaseException | None = None

    def _writer_up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=PROBE_TIMEOUT_S):
                return True
        except OSError:
            return False

    def run(self) -> None:
        started = time.monotonic()
        try:
            self._run(started)
        except BaseException as exc:  # reported by the caller
            self.error = exc
        self.active_s = round(time.monotonic() - started, 2)

    def _run(self, started: float) -> None:
        steps = max(1, int(self.spread_s / STEP_S))
        small_per_step = len(self.small) / steps
        small_bytes = 0
        for rel in self.small:  # what rewriting them costs, to split the budget
            small_bytes += (self.root / rel).stat().st_size
        append_per_step = max(APPEND_CHUNK, (self.budget - small_bytes) // steps // APPEND_CHUNK * APPEND_CHUNK)
        queue = list(self.small)
        done_small = 0.0
        with open(self.big, "ab") as big:
            for step in range(steps):
                if self.halt.is_set():
                    self.stopped_by = "backup ended"
                    return
                if not self._writer_up():
                    self.stopped_by = "service stopped"
                    return
                done_small += small_per_step
                while queue and self.files_rewritten < int(done_small):
                    path = self.root / queue.pop()
                    size = path.stat().st_size
                    path.write_bytes(f"rewritten {self.files_rewritten}\n".encode().ljust(size, b"x"))
                    self.files_rewritten += 1
                    self.bytes_written += size
                if self.bytes_written < self.budget:
                    data = self.rng.randbytes(append_per_step)
                    big.write(data)
                    big.flush()
                    self.appended += len(data)
                    self.bytes_written += len(data)
                # keep the pace: step k ends at k * STEP_S after the start
                delay = started + (step + 1) * STEP_S - time.monotonic()
                if delay > 0:
                    self.halt.wait(delay)

    def stop(self) -> dict:
        self.halt.set()
        self.join(30)
        if self.error is not None:
            raise self.error
        return {"files_rewritten": self.files_rewritten, "appended_bytes": self.appended,
                "bytes_written": self.bytes_written, "active_s": self.active_s, "stopped_by": self.stopped_by}
