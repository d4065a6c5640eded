"""Live events for `migrator serve`: one follower thread fans the event log out to clients (SSE).

One follower for all clients, so a dozen open dashboards cost one file poll, not a dozen. A client that
does not keep up loses events beyond its queue's bound rather than growing serve's memory."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator

from migrator.notify import events

QUEUE_BOUND = 1000
# A comment line this often keeps proxies and browsers from closing an idle stream.
KEEPALIVE_S = 15.0


class Broadcaster:
    def __init__(self) -> None:
        self._clients: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="events-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        for event in events.follow(stop=self._stop.is_set, poll=0.2):
            if event is None:
                continue
            with self._lock:
                clients = list(self._clients)
            for loop, queue in clients:
                loop.call_soon_threadsafe(_offer, queue, event)

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(QUEUE_BOUND)
        with self._lock:
            self._clients.add((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        with self._lock:
            self._clients = {c for c in self._clients if c[1] is not queue}


def _offer(queue: asyncio.Queue, event: dict) -> None:
    try:
        queue.put_nowait(event)
    except asyncio.QueueFull:
        pass


def _frame(event: dict) -> str:
    return f"event: {event['kind']}\ndata: {json.dumps(event, sort_keys=True)}\n\n"


async def sse(broadcaster: Broadcaster, replay: int = 0) -> AsyncIterator[str]:
    queue = broadcaster.subscribe()
    try:
        yield "retry: 2000\n\n"
        for event in events.read_recent(replay) if replay > 0 else []:
            yield _frame(event)
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            yield _frame(event)
    finally:
        broadcaster.unsubscribe(queue)
