"""Fixtures: each platform's fake, and a backend configured to call it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from provisioning.config import Config, load_config
from provisioning.http import BackendServer
from provisioning.rooms import RecordingRoomService
from tests.platforms.fake_base import FakePlatform
from tests.platforms.fake_call2me import FakeCall2Me
from tests.platforms.fake_click2call import FakeClick2Call
from tests.platforms.fake_hmsvoicedock import FakeHmsVoiceDock
from tests.platforms.fake_thinnestai import FakeThinnestAI
from tests.platforms.fake_vatel import FakeVatel
from tests.provisioning.conftest import (
    TIMEOUT_S,
    Api,
    FakeClock,
    TestDevice,
    clock,
    database_url,
    write_config,
)

# The fleet's key for every platform: it must never reach a device or a log line.
PLATFORM_KEY = "sk-live-FLEET-KEY-9f8e7d6c5b4a"

FAKES: dict[str, type[FakePlatform]] = {
    "call2me": FakeCall2Me,
    "vatel": FakeVatel,
    "thinnestai": FakeThinnestAI,
    "click2call": FakeClick2Call,
    "hmsvoicedock": FakeHmsVoiceDock,
}
# Each platform's provider settings, as an admin stores them.
SETTINGS: dict[str, dict[str, Any]] = {
    "call2me": {"kind": "call2me", "agent_id": "agent_abc123", "metadata": {"desk": "north"}},
    "vatel": {"kind": "vatel", "agent_id": "7b1d-agent"},
    "thinnestai": {
        "kind": "thinnestai",
        "agent_id": "agent_xyz",
        "context": {"purpose": "support"},
        "max_duration": 300,
    },
    "click2call": {
        "kind": "click2call",
        "agent_id": "agent-42",
        "case_id": "abc123",
        "customer_number": "9530251797",
        "customer_crm_id": "cust-99",
    },
    "hmsvoicedock": {
        "kind": "hmsvoicedock",
        "assistant_id": "17a0cb75-fa09-4bdd-9a44-92a70d829c88",
        "site": "lobby",
    },
}


@dataclass
class Rig:
    name: str
    fake: FakePlatform
    server: BackendServer
    api: Api
    device: TestDevice
    rooms: RecordingRoomService  # our LiveKit's room list (a platform's room is not on it)


def platform_config(
    tmp_path: Path, name: str, url: str, database_url: str | None, timeout_s: int = 4
) -> Config:
    key_file = tmp_path / f"{name}.key"
    key_file.write_text(PLATFORM_KEY + "\n")
    key_file.chmod(0o600)
    extra = (
        f'\n[platforms.{name}]\napi_key_file = "{key_file.name}"\n'
        f'base_url = "{url}"\ntimeout_s = {timeout_s}\n'
    )
    return load_config(write_config(tmp_path, extra, database_url=database_url))


# The backend tests' own fixtures, shared: each runs on SQLite and on PostgreSQL.
__all__ = ["clock", "database_url"]


@pytest.fixture
def platform_timeout_s() -> int:
    """The backend's `timeout_s` for the platform (a test may parametrize it)."""
    return 4


@pytest.fixture(params=sorted(FAKES))
def platform_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def rig(
    tmp_path: Path,
    platform_timeout_s: int,
    platform_name: str,
    database_url: str | None,
    clock: FakeClock,
) -> AsyncIterator[Rig]:
    async with asyncio.timeout(TIMEOUT_S):
        fake = await FAKES[platform_name](PLATFORM_KEY).__aenter__()
    try:
        config = platform_config(
            tmp_path, platform_name, fake.url, database_url, platform_timeout_s
        )
        rooms = RecordingRoomService()
        server = BackendServer(config, port=0, clock=clock, rooms=rooms)
        async with asyncio.timeout(TIMEOUT_S):
            await server.start()
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT_S) as client:
                api = Api(client, clock)
                device = TestDevice()
                code = await server.core.create_enrollment_code(label="platform")
                response = await api.enroll(device, code)
                assert response.status_code == 201, response.text
                await server.core.set_device_settings(
                    device.device_id, {"provider": SETTINGS[platform_name]}, actor="test"
                )
                yield Rig(platform_name, fake, server, api, device, rooms)
        finally:
            async with asyncio.timeout(TIMEOUT_S):
                await server.aclose()
    finally:
        async with asyncio.timeout(TIMEOUT_S):
            await fake.__aexit__(None, None, None)
