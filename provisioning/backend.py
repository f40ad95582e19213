"""`open_backend`: the one place the backend is put together from its config."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import httpx

from provisioning.config import Config
from provisioning.core import Clock, ProvisioningCore
from provisioning.events import FleetEvents, NoEvents
from provisioning.providers import platform_providers
from provisioning.rooms import LiveKitRoomService, RoomService
from provisioning.storage import SqlStorage, open_storage
from provisioning.storage.call_ledger import ledger_of
from provisioning.sweeper import Sweeper
from provisioning.tokens import LiveKitTokenMinter
from provisioning.webhooks_out import Webhooks, open_webhooks


@dataclass(frozen=True)
class Backend:
    """An open backend: its config, storage and core. The HTTP server and the CLI use this.

    `webhooks` is the webhooks-out service (its outbox lists deliveries), if configured.
    """

    config: Config
    storage: SqlStorage
    core: ProvisioningCore
    webhooks: Webhooks | None = None
    sweeper: Sweeper | None = None


@asynccontextmanager
async def open_backend(
    config: Config,
    *,
    clock: Clock = time.time,
    rooms: RoomService | None = None,
    sweep: bool = False,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[Backend]:
    """Open the configured database (migrating it) and wire the core; close both on exit.

    `rooms` replaces the client of the configured LiveKit server's room service (tests);
    `upstream_transport` the platforms' HTTP transport (tests).
    `sweep` runs the background tasks, the call sweeper and the webhook sender (the
    server does; a CLI command does not: the events it records wait for a server's sender).
    """
    async with AsyncExitStack() as stack:
        storage = await open_storage(config.database)
        stack.push_async_callback(storage.aclose)
        if rooms is None:
            rooms = await stack.enter_async_context(
                LiveKitRoomService(
                    config.livekit.url, config.livekit.api_key, config.livekit.api_secret
                )
            )
        minter = LiveKitTokenMinter(
            api_key=config.livekit.api_key,
            api_secret=config.livekit.api_secret,
            agent_name=config.calls.agent_name,
            ttl_s=config.calls.token_ttl_s,
        )
        events: FleetEvents = NoEvents()
        webhooks = None
        if config.webhooks is not None:
            # Closed before the storage: the sender's task ends first.
            webhooks = await stack.enter_async_context(
                open_webhooks(config.webhooks, storage.db, clock=clock, deliver=sweep)
            )
            events = webhooks.events
        core = ProvisioningCore(
            storage,
            config,
            minter=minter,
            rooms=rooms,
            events=events,
            platforms=platform_providers(config.platforms, transport=upstream_transport),
            clock=clock,
        )
        # Its ring timers end before the storage and the outbox they use are closed.
        stack.push_async_callback(core.aclose)
        sweeper = None
        if sweep:
            # Entered last, so stopped first: its task ends before what it uses is closed.
            sweeper = await stack.enter_async_context(
                Sweeper(
                    storage,
                    ledger_of(storage),
                    rooms,
                    call_ended=core.call_ended,
                    clock=clock,
                    rings_due=core.ringing.resolve_due,
                )
            )
        yield Backend(config=config, storage=storage, core=core, webhooks=webhooks, sweeper=sweeper)
