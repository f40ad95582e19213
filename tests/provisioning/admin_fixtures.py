"""Admin tokens for the admin API and console tests, made the way the CLI makes them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from provisioning.admin.tokens import AdminScope, AdminTokens
from provisioning.config import Config
from provisioning.storage import open_storage

from .conftest import TIMEOUT_S, FakeClock


@pytest.fixture
def database_url() -> None:
    """SQLite only: the storage under these adapters is tested on both databases elsewhere."""
    return None


@pytest.fixture
async def admin_tokens(config: Config, clock: FakeClock) -> AsyncIterator[AdminTokens]:
    """The token store on the backend's database, opened beside the server as the CLI does."""
    async with asyncio.timeout(TIMEOUT_S):
        storage = await open_storage(config.database)
    try:
        yield AdminTokens(storage.db, clock=clock)
    finally:
        await storage.aclose()


@pytest.fixture
async def write_token(admin_tokens: AdminTokens) -> str:
    return (await admin_tokens.create("ops", AdminScope.READ_WRITE))[1]


@pytest.fixture
async def read_token(admin_tokens: AdminTokens) -> str:
    return (await admin_tokens.create("auditor", AdminScope.READ))[1]
