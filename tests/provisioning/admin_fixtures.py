"""Admin tokens and webhook deliveries for the admin API and console tests, made beside the
running server on its database, the way the CLI and the webhook sender make them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from provisioning.admin.tokens import AdminScope, AdminTokens
from provisioning.config import Config
from provisioning.events import EventKind, FleetEvent
from provisioning.storage import open_storage
from provisioning.storage.base import Database
from provisioning.webhooks_out import DeliveryError, WebhookOutbox

from .conftest import TIMEOUT_S, FakeClock


@pytest.fixture
def database_url() -> None:
    """SQLite only: the storage under these adapters is tested on both databases elsewhere."""
    return None


@pytest.fixture
async def admin_db(config: Config) -> AsyncIterator[Database]:
    """The backend's database, opened a second time as the CLI opens it."""
    async with asyncio.timeout(TIMEOUT_S):
        storage = await open_storage(config.database)
    try:
        yield storage.db
    finally:
        await storage.aclose()


@pytest.fixture
def admin_tokens(admin_db: Database, clock: FakeClock) -> AdminTokens:
    return AdminTokens(admin_db, clock=clock)


@pytest.fixture
async def write_token(admin_tokens: AdminTokens) -> str:
    return (await admin_tokens.create("ops", AdminScope.READ_WRITE))[1]


@pytest.fixture
async def read_token(admin_tokens: AdminTokens) -> str:
    return (await admin_tokens.create("auditor", AdminScope.READ))[1]


async def add_deliveries(db: Database, clock: FakeClock) -> tuple[str, str]:
    """One event delivered (HTTP 204) and one given up (HTTP 503): (delivered, failed) ids."""
    outbox = WebhookOutbox(db)
    now = clock.now
    ok = await outbox.add(
        FleetEvent(EventKind.DEVICE_APPROVED, now, {"device_id": "d-00000000000000aa"}), now=now
    )
    bad = await outbox.add(
        FleetEvent(EventKind.CALL_ENDED, now, {"device_id": "d-00000000000000bb"}), now=now
    )
    for event in await outbox.claim(now=now, owner="test", lease_s=30, limit=10):
        if event.event_id == ok:
            await outbox.delivered(event, now=now, status=204)
        else:
            await outbox.failed(
                event,
                owner="test",
                now=now,
                status=503,
                error=DeliveryError.HTTP_STATUS,
                retry_at=None,
            )
    return ok, bad
