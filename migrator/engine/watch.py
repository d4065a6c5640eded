"""Container events from the engine's event stream, read as untrusted input.

The Docker-compatible /events that podman and dockerd both serve; what `serve --follow-dependents` wakes
on (docs/serve.md, Dependents follow)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

# Actions that change whether a container runs; the others (exec, attach, health_status...) are ignored.
ACTIONS = frozenset({"start", "restart", "die", "died", "stop", "kill", "oom"})
NAME_MAX = 255


@dataclass(frozen=True)
class ContainerEvent:
    name: str
    action: str  # start | restart | die | stop | kill | oom ("died", podman's word, reads as "die")
    at: float  # the engine's clock, seconds since the epoch

    @classmethod
    def parse(cls, raw: object) -> ContainerEvent | None:
        """One decoded event, or None when it is not a well-formed container event we act on."""
        if not isinstance(raw, dict) or raw.get("Type", "container") != "container":
            return None
        action = raw.get("Action", raw.get("status"))
        actor = raw.get("Actor")
        attrs = actor.get("Attributes") if isinstance(actor, dict) else None
        name = attrs.get("name") if isinstance(attrs, dict) else None
        if not isinstance(action, str) or action not in ACTIONS:
            return None
        if not isinstance(name, str) or not 0 < len(name) <= NAME_MAX:
            return None
        nano, secs = raw.get("timeNano"), raw.get("time")
        if isinstance(nano, int) and not isinstance(nano, bool) and 0 < nano < 2**63:
            at = nano / 1e9
        elif isinstance(secs, (int, float)) and not isinstance(secs, bool) and math.isfinite(secs) and secs > 0:
            at = float(secs)
        else:
            return None
        return cls(name=name, action="die" if action == "died" else action, at=at)


class EventStream:
    """The engine's container events for the containers carrying `labels`, until `close` (from any thread)."""

    def __init__(self, api, labels: dict[str, str], since: int | None = None) -> None:
        """`since` (whole seconds since the epoch): replay the events from then on first, then follow."""
        self._stream = api.events(decode=True, since=since, filters={
            "type": ["container"], "label": [f"{k}={v}" for k, v in labels.items()]})

    def __iter__(self) -> Iterator[ContainerEvent]:
        for raw in self._stream:
            event = ContainerEvent.parse(raw)
            if event is not None:
                yield event

    def close(self) -> None:
        self._stream.close()
