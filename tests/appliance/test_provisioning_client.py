"""The device's provisioning client against the real backend, over real HTTP and SQLite."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from livekit import api

from appliance.errors import (
    AwaitingApprovalError,
    BackendUnreachableError,
    CredentialsRejectedError,
    DeviceKeyError,
    RateLimitedError,
)
from appliance.provisioning_client import DeviceKey, ProvisioningClient, StatusReport
from appliance.provisioning_client.enrollment import (
    ENROLLMENT_FILE_NAME,
    Enrollment,
    enroll_device,
)
from appliance.provisioning_client.keys import KEY_FILE_NAME
from provisioning.config import load_config
from provisioning.http import BackendServer

pytestmark = pytest.mark.integration

API_KEY = "APIdevicetest"
API_SECRET = "device-test-secret-0123456789abcdefghijkl"


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[BackendServer]:
    config = tmp_path / "provisioning.toml"
    config.write_text(
        '[server]\nhost = "127.0.0.1"\nport = 0\n[database]\npath = "db.sqlite3"\n'
        f'[livekit]\nurl = "ws://127.0.0.1:7880"\napi_key = "{API_KEY}"\n'
        f'api_secret = "{API_SECRET}"\n[calls]\nagent_name = "agent-x"\ntoken_ttl_s = 300\n'
    )
    config.chmod(0o600)
    async with asyncio.timeout(10), BackendServer(load_config(config), port=0) as server:
        yield server


async def _enrolled_client(backend: BackendServer, state_dir: Path) -> ProvisioningClient:
    key = DeviceKey.load_or_create(state_dir)
    client = ProvisioningClient(backend.url, key)
    code = await backend.core.create_enrollment_code(ttl_s=60)
    async with asyncio.timeout(5):
        await client.enroll(code, "lobby")
    return client


def test_key_is_made_on_the_device_private_and_stable(tmp_path: Path) -> None:
    key = DeviceKey.load_or_create(tmp_path / "state")
    path = tmp_path / "state" / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    again = DeviceKey.load_or_create(tmp_path / "state")
    assert again.public_key_b64 == key.public_key_b64
    assert "PRIVATE" not in repr(key)


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    DeviceKey.load_or_create(tmp_path)
    (tmp_path / KEY_FILE_NAME).chmod(0o644)
    with pytest.raises(DeviceKeyError, match="0600"):
        DeviceKey.load_or_create(tmp_path)


async def test_enrollment_record_is_private_and_written_whole(
    backend: BackendServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    code = await backend.core.create_enrollment_code(ttl_s=60)
    async with asyncio.timeout(5):
        enrollment = await enroll_device(state, backend.url, "lobby", code)
    path = state / ENROLLMENT_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Enrollment.load(state) == enrollment
    assert sorted(p.name for p in state.iterdir()) == [KEY_FILE_NAME, ENROLLMENT_FILE_NAME]


async def test_enroll_check_in_and_call_token(backend: BackendServer, tmp_path: Path) -> None:
    sent: list[bytes] = []

    async def spy(request: httpx.Request) -> None:
        sent.append(request.content)

    key = DeviceKey.load_or_create(tmp_path)
    client = ProvisioningClient(backend.url, key)
    client._http.event_hooks["request"] = [spy]
    code = await backend.core.create_enrollment_code(ttl_s=60)
    async with asyncio.timeout(10), client:
        device_id, identity = await client.enroll(code, "lobby")
        info = await client.check_in()
        grant = await client.create_call("button")
        await client.end_call(grant.call_id, "user", 1234)

    assert device_id == key.fingerprint
    assert info.device_id == device_id and info.agent_name == "agent-x"
    assert grant.identity == identity == f"device-{device_id}"
    claims = api.TokenVerifier(API_KEY, API_SECRET).verify(grant.token)
    assert claims.identity == identity
    assert claims.video is not None and claims.video.room == grant.room
    assert abs(grant.expires_at.timestamp() - (time.time() + 300)) < 5
    record = next(c for c in await backend.core.list_calls() if c.call_id == grant.call_id)
    assert (record.end_reason, record.duration_ms) == ("user", 1234)
    # The private key never left the device: only the public half went over the wire.
    private_pem = (tmp_path / KEY_FILE_NAME).read_bytes()
    body = b"".join(sent)
    assert key.public_key_b64.encode() in body
    assert b"PRIVATE" not in body and private_pem not in body


async def test_unenrolled_device_is_refused_without_a_token(
    backend: BackendServer, tmp_path: Path
) -> None:
    key = DeviceKey.load_or_create(tmp_path)
    async with ProvisioningClient(backend.url, key, device_id=key.fingerprint) as client:
        with pytest.raises(CredentialsRejectedError) as refused:
            await asyncio.wait_for(client.create_call("button"), 5)
    assert (refused.value.status, refused.value.code) == (401, "unknown_device")
    assert await backend.core.list_calls() == []


async def test_wrong_key_is_refused_without_a_token(backend: BackendServer, tmp_path: Path) -> None:
    enrolled = await _enrolled_client(backend, tmp_path / "a")
    await enrolled.aclose()
    impostor = DeviceKey.load_or_create(tmp_path / "b")
    device_id = DeviceKey.load_or_create(tmp_path / "a").fingerprint
    async with ProvisioningClient(backend.url, impostor, device_id=device_id) as client:
        with pytest.raises(CredentialsRejectedError) as refused:
            await asyncio.wait_for(client.create_call("button"), 5)
    assert (refused.value.status, refused.value.code) == (401, "bad_signature")
    assert await backend.core.list_calls() == []


async def test_replayed_request_is_refused(backend: BackendServer, tmp_path: Path) -> None:
    client = await _enrolled_client(backend, tmp_path)
    body = json.dumps({"trigger": "button"}).encode()
    headers = client.signed_headers("POST", "/v1/calls", body, client._require_id())
    headers["Content-Type"] = "application/json"
    async with asyncio.timeout(10), client, httpx.AsyncClient(base_url=backend.url) as raw:
        first = await raw.post("/v1/calls", content=body, headers=headers)
        second = await raw.post("/v1/calls", content=body, headers=headers)
    assert first.status_code == 201
    assert second.status_code == 401
    assert second.json()["error"] == "replayed_request"
    assert "token" not in second.json()
    assert len(await backend.core.list_calls()) == 1


@pytest.mark.parametrize("skew_s", [-600, 600])
async def test_stale_timestamp_is_refused(
    backend: BackendServer, tmp_path: Path, skew_s: int
) -> None:
    enrolled = await _enrolled_client(backend, tmp_path)
    device_id = enrolled._require_id()
    await enrolled.aclose()
    key = DeviceKey.load_or_create(tmp_path)
    async with ProvisioningClient(
        backend.url, key, device_id=device_id, wall_clock=lambda: time.time() + skew_s
    ) as client:
        with pytest.raises(CredentialsRejectedError) as refused:
            await asyncio.wait_for(client.create_call("button"), 5)
    assert (refused.value.status, refused.value.code) == (401, "stale_timestamp")
    assert await backend.core.list_calls() == []


async def test_backend_down_is_unreachable_not_rejected(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    key = DeviceKey.load_or_create(tmp_path)
    async with ProvisioningClient(f"http://127.0.0.1:{port}", key, device_id="d-x") as client:
        with pytest.raises(BackendUnreachableError):
            await asyncio.wait_for(client.check_in(), 5)


async def test_slow_backend_times_out_as_unreachable(tmp_path: Path) -> None:
    hung_up = asyncio.Event()

    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Say nothing until the client gives up, then close our end (or the socket leaks).
        await reader.read()
        writer.close()
        hung_up.set()

    server = await asyncio.start_server(never_answers, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    key = DeviceKey.load_or_create(tmp_path)
    try:
        async with ProvisioningClient(
            f"http://127.0.0.1:{port}", key, device_id="d-x", timeout_s=0.3
        ) as client:
            with pytest.raises(BackendUnreachableError, match="timed out"):
                await asyncio.wait_for(client.check_in(), 5)
        await asyncio.wait_for(hung_up.wait(), 5)
    finally:
        server.close()


@pytest.mark.parametrize(
    ("header", "expected"),
    [("30", 30.0), ("nan", None), ("inf", None), ("-5", None), ("1e12", 3600.0), ("soon", None)],
)
async def test_retry_after_is_used_only_when_sane(
    tmp_path: Path, header: str, expected: float | None
) -> None:
    def limited(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429, json={"error": "rate_limited", "message": "slow"}, headers={"Retry-After": header}
        )

    key = DeviceKey.load_or_create(tmp_path)
    transport = httpx.MockTransport(limited)
    async with ProvisioningClient("http://backend", key, device_id="d-x", transport=transport) as c:
        with pytest.raises(RateLimitedError) as limited_error:
            await asyncio.wait_for(c.create_call("button"), 5)
    assert limited_error.value.retry_after_s == expected


async def test_a_pending_device_waits_then_gets_its_settings_and_reports_its_status(
    backend: BackendServer, tmp_path: Path
) -> None:
    key = DeviceKey.load_or_create(tmp_path)
    client = ProvisioningClient(backend.url, key)
    code = await backend.core.create_enrollment_code(ttl_s=60, requires_approval=True)
    report = StatusReport(firmware="9.9", board="pi4", state="awaiting_approval", last_error="E03")
    async with asyncio.timeout(10), client:
        device_id, _ = await client.enroll(code, "lobby")
        with pytest.raises(AwaitingApprovalError):
            await client.check_in(report)
        with pytest.raises(AwaitingApprovalError):
            await client.hold_grant()
        await backend.core.approve_device(device_id, actor="test")
        await backend.core.set_device_settings(device_id, {"call": {"cooldown_s": 3}}, actor="test")
        info = await client.check_in(report)
    assert info.status == "approved"
    assert info.settings == {"call": {"cooldown_s": 3.0}}
    [device] = await backend.core.list_devices()
    assert (device.firmware, device.board, device.state, device.last_error) == (
        "9.9",
        "pi4",
        "awaiting_approval",
        "E03",
    )
