"""Diagnostic grants (`POST /v1/diagnostics/livekit`): a throwaway room of the device's own,
a minute's join and nothing else, no agent, no call, a few a minute per device."""

from __future__ import annotations

import time

import jwt
import pytest

from provisioning.diagnostics import DIAGNOSTIC_PATH, MAX_DIAGNOSTICS_PER_MINUTE
from provisioning.http import BackendServer
from provisioning.rooms import RecordingRoomService

from .conftest import API_KEY, API_SECRET, LIVEKIT_URL, Api, FakeClock, TestDevice, assert_refused

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url() -> None:
    """SQLite only: a diagnostic grant writes nothing but the spent nonce."""
    return None


async def test_the_grant_is_the_narrowest_join_of_a_room_of_its_own(
    server: BackendServer, api: Api, enrolled: TestDevice, rooms: RecordingRoomService
) -> None:
    response = await api.send("POST", DIAGNOSTIC_PATH, enrolled, {})
    assert response.status_code == 201, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) == {"server_url", "token", "room", "identity", "expires_at"}
    assert body["server_url"] == LIVEKIT_URL
    (device,) = await server.core.list_devices()
    assert body["identity"] == device.identity
    assert body["room"].startswith(f"diag-{enrolled.device_id}-")

    claims = jwt.decode(body["token"], API_SECRET, algorithms=["HS256"], issuer=API_KEY)
    assert claims["sub"] == body["identity"]
    assert claims["video"] == {
        "roomJoin": True,
        "room": body["room"],
        "canPublish": False,
        "canSubscribe": False,
        "canPublishData": False,
        "canPublishSources": [],
        "canUpdateOwnMetadata": False,
    }
    assert "roomConfig" not in claims  # no agent is dispatched into it
    assert "metadata" not in claims and "attributes" not in claims
    assert 0 < claims["exp"] - time.time() <= 60
    assert claims["exp"] - claims["nbf"] <= 60

    # Each grant is a new room; none is a call, a held grant, or a room-service request.
    again = (await api.send("POST", DIAGNOSTIC_PATH, enrolled, {})).json()
    assert again["room"] != body["room"]
    assert await server.core.list_calls() == []
    assert rooms.calls == []


async def test_a_few_a_minute_per_device(
    server: BackendServer, api: Api, enrolled: TestDevice, clock: FakeClock
) -> None:
    for _ in range(MAX_DIAGNOSTICS_PER_MINUTE):
        assert (await api.send("POST", DIAGNOSTIC_PATH, enrolled, {})).status_code == 201
    refused = await api.send("POST", DIAGNOSTIC_PATH, enrolled, {})
    assert_refused(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Another device has its own count.
    other = TestDevice()
    code = await server.core.create_enrollment_code(label="other")
    assert (await api.enroll(other, code)).status_code == 201
    assert (await api.send("POST", DIAGNOSTIC_PATH, other, {})).status_code == 201
    # A minute later the first may again.
    clock.advance(61)
    assert (await api.send("POST", DIAGNOSTIC_PATH, enrolled, {})).status_code == 201


async def test_only_signed_requests_of_approved_devices(
    server: BackendServer, api: Api, enrolled: TestDevice
) -> None:
    assert_refused(await api.send("POST", DIAGNOSTIC_PATH, None, {}), 401, "missing_signature")
    assert_refused(await api.send("POST", DIAGNOSTIC_PATH, TestDevice(), {}), 401, "unknown_device")
    response = await api.send("POST", DIAGNOSTIC_PATH, enrolled, {}, signer=TestDevice().key)
    assert_refused(response, 401, "bad_signature")
    await server.core.revoke_device(enrolled.device_id)
    assert_refused(await api.send("POST", DIAGNOSTIC_PATH, enrolled, {}), 403, "device_revoked")
