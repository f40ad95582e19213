"""Webhooks out through the real server: enroll, call, end, revoke reach a receiver, signed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from provisioning.backend import open_backend
from provisioning.config import load_config
from provisioning.events import EventKind, FleetEvent
from provisioning.http import BackendServer
from provisioning.rooms import RecordingRoomService

from .conftest import TIMEOUT_S, Api, FakeClock, TestDevice, write_config
from .webhook_receiver import SECRET, WebhookReceiver

pytestmark = pytest.mark.integration


@pytest.fixture
async def receiver(clock: FakeClock) -> AsyncIterator[WebhookReceiver]:
    hooks = WebhookReceiver(clock)
    async with asyncio.timeout(TIMEOUT_S):
        await hooks.start()
    try:
        yield hooks
    finally:
        await hooks.aclose()


@pytest.fixture
async def hooked_server(
    tmp_path: Path,
    database_url: str | None,
    clock: FakeClock,
    rooms: RecordingRoomService,
    receiver: WebhookReceiver,
) -> AsyncIterator[BackendServer]:
    (tmp_path / "hook-secret").write_text(SECRET, encoding="utf-8")
    (tmp_path / "hook-secret").chmod(0o600)
    extra = f'\n[webhooks]\nurl = "{receiver.url}"\nsecret_file = "hook-secret"\ntimeout_s = 5\n'
    config = load_config(write_config(tmp_path, extra, database_url=database_url))
    server = BackendServer(config, port=0, clock=clock, rooms=rooms)
    async with asyncio.timeout(TIMEOUT_S):
        await server.start()
    try:
        yield server
    finally:
        async with asyncio.timeout(TIMEOUT_S):
            await server.aclose()


async def test_fleet_events_reach_the_receiver_in_order_and_signed(
    hooked_server: BackendServer, clock: FakeClock, receiver: WebhookReceiver
) -> None:
    device = TestDevice()
    async with httpx.AsyncClient(base_url=hooked_server.url, timeout=TIMEOUT_S) as client:
        api = Api(client, clock)
        code = await hooked_server.core.create_enrollment_code(label="hooks")
        assert (await api.enroll(device, code)).status_code == 201
        started = await api.start_call(device, {"trigger": "wake_word"})
        assert started.status_code == 201, started.text
        call_id = started.json()["call_id"]
        clock.advance(42)
        ended = await api.send(
            "POST",
            f"/v1/calls/{call_id}/end",
            device,
            {"reason": "user", "duration_ms": 41_500},
        )
        assert ended.status_code == 200, ended.text
    await hooked_server.core.revoke_device(device.device_id)

    async with asyncio.timeout(TIMEOUT_S):
        while len(receiver.accepted) < 4:
            await asyncio.sleep(0.02)
    assert receiver.refused_signatures == 0
    assert [r.type for r in receiver.accepted] == [
        "device.enrolled",
        "call.started",
        "call.ended",
        "device.revoked",
    ]
    assert {r.device_id for r in receiver.accepted} == {device.device_id}
    start, end = receiver.accepted[1].body, receiver.accepted[2].body
    assert start["data"]["trigger"] == "wake_word" and start["data"]["call_id"] == call_id
    assert end["data"]["end_reason"] == "user"
    assert end["data"]["duration_ms"] == 41_500
    assert end["data"]["trigger"] == "wake_word"
    assert end["at"] == clock.now
    for item in receiver.accepted:
        assert item.headers["Webhook-Id"] == item.body["id"] == json.loads(item.raw)["id"]


async def test_a_cli_style_backend_only_records_and_the_server_sends(
    tmp_path: Path,
    database_url: str | None,
    clock: FakeClock,
    receiver: WebhookReceiver,
) -> None:
    """open_backend without its background tasks (a CLI command) records into the outbox."""
    (tmp_path / "hook-secret").write_text(SECRET, encoding="utf-8")
    (tmp_path / "hook-secret").chmod(0o600)
    extra = f'\n[webhooks]\nurl = "{receiver.url}"\nsecret_file = "hook-secret"\n'
    config = load_config(write_config(tmp_path, extra, database_url=database_url))
    rooms = RecordingRoomService()
    async with asyncio.timeout(TIMEOUT_S), open_backend(config, clock=clock, rooms=rooms) as cli:
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "webhooks-out"]
        assert cli.webhooks is not None
        await cli.webhooks.events.emit(
            FleetEvent(EventKind.DEVICE_REVOKED, clock.now, {"device_id": "d-cli"})
        )
    assert receiver.received == []
    server = BackendServer(config, port=0, clock=clock, rooms=rooms)
    async with asyncio.timeout(TIMEOUT_S), server:
        # The server's sender finds it at start (and every poll after).
        while len(receiver.accepted) < 1:
            await asyncio.sleep(0.02)
    assert [r.device_id for r in receiver.accepted] == ["d-cli"]
    assert receiver.accepted[0].type == "device.revoked"
