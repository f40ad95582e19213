"""`open_backend`: the one place the backend is put together from its config."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from provisioning.config import Config
from provisioning.core import Clock, ProvisioningCore
from provisioning.storage import SqlStorage, open_storage
from provisioning.tokens import LiveKitTokenMinter


@dataclass(frozen=True)
class Backend:
    """An open backend: its config, storage and core. The HTTP server and the CLI use this."""

    config: Config
    storage: SqlStorage
    core: ProvisioningCore


@asynccontextmanager
async def open_backend(config: Config, *, clock: Clock = time.time) -> AsyncIterator[Backend]:
    """Open the configured database (migrating it) and wire the core; close it on exit."""
    storage = await open_storage(config.database)
    try:
        minter = LiveKitTokenMinter(
            api_key=config.livekit.api_key,
            api_secret=config.livekit.api_secret,
            agent_name=config.calls.agent_name,
            ttl_s=config.calls.token_ttl_s,
        )
        core = ProvisioningCore(storage, config, minter=minter, clock=clock)
        yield Backend(config=config, storage=storage, core=core)
    finally:
        await storage.aclose()
