"""Webhooks out: fleet events into a durable outbox, POSTed signed to the fleet's URL.

`open_webhooks` is what `open_backend` uses: it yields the `FleetEvents` the core emits
to (`OutboxEvents`), the outbox (the console lists deliveries from it) and the sender,
whose task lives until the context exits. See docs/webhooks.md.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from provisioning.config import WebhooksConfig
from provisioning.errors import StorageError
from provisioning.events import FleetEvent
from provisioning.storage.base import Database
from provisioning.webhooks_out.outbox import (
    Delivery,
    DeliveryError,
    DeliveryState,
    WebhookOutbox,
)
from provisioning.webhooks_out.sender import WebhookSender

__all__ = [
    "Delivery",
    "DeliveryError",
    "DeliveryState",
    "OutboxEvents",
    "WebhookOutbox",
    "WebhookSender",
    "Webhooks",
    "open_webhooks",
]

logger = logging.getLogger(__name__)


class OutboxEvents:
    """`FleetEvents` into the outbox: `emit` returns once the event's row is committed.

    A database that cannot take the row is logged, not raised: what the event announces
    has already happened, and failing the device's request would not bring it back.
    """

    def __init__(
        self,
        outbox: WebhookOutbox,
        *,
        clock: Callable[[], float],
        recorded: Callable[[], None] = lambda: None,
    ) -> None:
        self._outbox = outbox
        self._clock = clock
        self._recorded = recorded

    async def emit(self, event: FleetEvent) -> None:
        """Record `event` in the outbox, then tell the sender."""
        try:
            event_id = await self._outbox.add(event, now=self._clock())
        except StorageError as exc:
            logger.error(
                "fleet event not recorded: %s",
                exc.message,
                extra={"event_type": event.kind.value, "device_id": event.data.get("device_id")},
            )
            return
        logger.debug("fleet event recorded", extra={"event_id": event_id})
        self._recorded()


@dataclass(frozen=True)
class Webhooks:
    """An open webhooks-out service: the core's events, the outbox and its sender."""

    events: OutboxEvents
    outbox: WebhookOutbox
    sender: WebhookSender


@asynccontextmanager
async def open_webhooks(
    config: WebhooksConfig,
    db: Database,
    *,
    clock: Callable[[], float],
    transport: httpx.AsyncBaseTransport | None = None,
    deliver: bool = True,
) -> AsyncIterator[Webhooks]:
    """Start the sender over `db`'s outbox; on exit its task is cancelled and awaited.

    `deliver=False` only records events (a CLI command): a server's sender sends them.
    """
    outbox = WebhookOutbox(db)
    sender = WebhookSender(outbox, config, clock=clock, transport=transport)
    try:
        if deliver:
            await sender.start()
        yield Webhooks(
            events=OutboxEvents(outbox, clock=clock, recorded=sender.wake),
            outbox=outbox,
            sender=sender,
        )
    finally:
        await sender.aclose()
