"""Fleet events: what the core tells the outside world happened (webhooks out listen)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class EventKind(StrEnum):
    """The kinds of fleet event; their names are the `type` a webhook receiver sees."""

    CALL_STARTED = "call.started"
    # The call rings people first (ring_operators): the operators' join link.
    CALL_RINGING = "call.ringing"
    # Someone answered the ring: the other operators need not.
    CALL_ANSWERED = "call.answered"
    CALL_ENDED = "call.ended"
    DEVICE_ENROLLED = "device.enrolled"
    DEVICE_APPROVED = "device.approved"
    DEVICE_REJECTED = "device.rejected"
    DEVICE_REVOKED = "device.revoked"


@dataclass(frozen=True)
class FleetEvent:
    """One thing that happened, at `at` (Unix seconds), with its JSON-ready `data`."""

    kind: EventKind
    at: float
    data: dict[str, Any] = field(default_factory=dict)


class FleetEvents(Protocol):
    """Where the core sends its events. `emit` returns once the event is safe (recorded)."""

    async def emit(self, event: FleetEvent) -> None:
        """Record `event` for whoever listens; must not raise for a listener's failure."""
        ...


class NoEvents:
    """Nobody listens: events are dropped (a backend with no webhook configured)."""

    async def emit(self, event: FleetEvent) -> None:
        """Drop `event`."""
