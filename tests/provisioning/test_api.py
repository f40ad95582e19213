"""The HTTP API of docs/api.md over real HTTP and a real SQLite database."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import jwt
import pytest
from livekit.api import TokenVerifier

from provisioning.config import load_config
from provisioning.http import BackendServer

from .conftest import (
    AGENT_NAME,
    API_KEY,
    API_SECRET,
    LIVEKIT_URL,
    MAX_SKEW_S,
    TIMEOUT_S,
    TOKEN_TTL_S,
    Api,
    FakeClock,
    TestDevice,
    assert_refused,
    write_config,
)

pytestmark = pytest.mark.integration

EXPECTED_VIDEO_GRANTS = {
    "roomJoin": True,
    "canPublish": True,
    "canSubscribe": True,
    "canPublishData": True,
    "canPublishSources": ["microphone"],
    # Its own participant attributes: the kiosk's state for late joiners.
    "canUpdateOwnMetadata": True,
}


# Authentication of signed requests


async def test_check_in(enrolled: TestDevice, api: Api) -> None:
    response = await api.send("GET", "/v1/device", enrolled)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "device_id": enrolled.device_id,
        "name": "kiosk",
        "status": "approved",
        "agent_name": AGENT_NAME,
        "settings": {},
        "call_provider": {"kind": "livekit", "hold_grants": True},
    }


async def test_unsigned_request_is_missing_signature(server: BackendServer, api: Api) -> None:
    assert_refused(
        await api.send("POST", "/v1/calls", None, {"trigger": "button"}), 401, "missing_signature"
    )
    assert await server.core.list_calls() == []


async def test_unenrolled_device_is_unknown(server: BackendServer, api: Api) -> None:
    await server.core.create_enrollment_code()
    assert_refused(await api.start_call(TestDevice()), 401, "unknown_device")
    assert await server.core.list_calls() == []


async def test_signature_by_another_key_is_refused(
    server: BackendServer, api: Api, enrolled: TestDevice
) -> None:
    response = await api.start_call(enrolled, signer=TestDevice().key)
    assert_refused(response, 401, "bad_signature")
    assert await server.core.list_calls() == []


async def test_signature_covers_the_body(
    server: BackendServer, api: Api, enrolled: TestDevice
) -> None:
    signed_body = json.dumps({"trigger": "button"}).encode()
    headers = enrolled.headers("POST", "/v1/calls", signed_body, timestamp=int(api.clock.now))
    response = await api.client.post(
        "/v1/calls", content=json.dumps({"trigger": "command"}).encode(), headers=headers
    )
    assert_refused(response, 401, "bad_signature")
    assert await server.core.list_calls() == []


async def test_signature_covers_the_path(
    server: BackendServer, api: Api, enrolled: TestDevice
) -> None:
    body = json.dumps({"trigger": "button"}).encode()
    headers = enrolled.headers("POST", "/v1/enroll", body, timestamp=int(api.clock.now))
    response = await api.client.post("/v1/calls", content=body, headers=headers)
    assert_refused(response, 401, "bad_signature")
    assert await server.core.list_calls() == []


async def test_replayed_request_is_refused(
    server: BackendServer, api: Api, enrolled: TestDevice
) -> None:
    nonce = "0123456789abcdef0123456789abcdef"
    assert (await api.start_call(enrolled, nonce=nonce)).status_code == 201
    assert_refused(await api.start_call(enrolled, nonce=nonce), 401, "replayed_request")
    assert len(await server.core.list_calls()) == 1


async def test_replay_of_identical_request_is_refused(
    server: BackendServer, api: Api, enrolled: TestDevice
) -> None:
    body = json.dumps({"trigger": "wake_word"}).encode()
    headers = enrolled.headers("POST", "/v1/calls", body, timestamp=int(api.clock.now))
    first = await api.client.post("/v1/calls", content=body, headers=headers)
    assert first.status_code == 201
    assert_refused(
        await api.client.post("/v1/calls", content=body, headers=headers), 401, "replayed_request"
    )
    assert len(await server.core.list_calls()) == 1


@pytest.mark.parametrize("offset", [-(MAX_SKEW_S + 1), MAX_SKEW_S + 1, -3600, 3600])
async def test_stale_timestamp_is_refused(
    server: BackendServer, api: Api, enrolled: TestDevice, offset: int
) -> None:
    response = await api.start_call(enrolled, timestamp=int(api.clock.now) + offset)
    assert_refused(response, 401, "stale_timestamp")
    assert await server.core.list_calls() == []


@pytest.mark.parametrize("offset", [-MAX_SKEW_S, MAX_SKEW_S])
async def test_timestamp_at_edge_of_window_is_accepted(
    api: Api, enrolled: TestDevice, offset: int
) -> None:
    response = await api.start_call(enrolled, timestamp=int(api.clock.now) + offset)
    assert response.status_code == 201, response.text


async def test_malformed_nonce_is_bad_signature(
    server: BackendServer, api: Api, enrolled: TestDevice
) -> None:
    response = await api.start_call(enrolled, nonce="ABCDEF0123456789ABCDEF0123456789")
    assert_refused(response, 401, "bad_signature")
    assert await server.core.list_calls() == []


async def test_revoked_device_is_refused(
    server: BackendServer, api: Api, enrolled: TestDevice
) -> None:
    await server.core.revoke_device(enrolled.device_id)
    assert_refused(await api.start_call(enrolled), 403, "device_revoked")
    assert_refused(await api.send("GET", "/v1/device", enrolled), 403, "device_revoked")
    assert await server.core.list_calls() == []


# Calls


async def test_call_token_carries_exactly_the_fixed_grants(
    server: BackendServer, api: Api, enrolled: TestDevice
) -> None:
    response = await api.start_call(enrolled, {"trigger": "wake_word"})
    assert response.status_code == 201, response.text
    assert response.headers["Cache-Control"] == "no-store"  # the token is a secret
    now = time.time()
    body = response.json()
    assert set(body) == {
        "server_url",
        "token",
        "room",
        "identity",
        "call_id",
        "expires_at",
        "provider",
    }
    assert body["provider"] == "livekit"
    call_id = body["call_id"]
    assert re.fullmatch(r"c-[0-9a-f]{16}", call_id)
    identity = f"device-{enrolled.device_id}"
    assert body["room"] == f"call-{call_id}"
    assert body["identity"] == identity
    assert body["server_url"] == LIVEKIT_URL

    claims = TokenVerifier(API_KEY, API_SECRET).verify(body["token"])
    assert claims.identity == identity
    assert claims.video is not None
    assert claims.video.room == body["room"]
    assert claims.video.room_join is True
    assert claims.video.can_subscribe is True
    assert claims.video.can_publish is True
    assert claims.video.can_publish_data is True
    assert claims.video.can_publish_sources == ["microphone"]
    for power in ("room_admin", "room_create", "room_list", "room_record", "ingress_admin"):
        assert getattr(claims.video, power) is None, power
    metadata = {"device_id": enrolled.device_id, "call_id": call_id}
    assert json.loads(claims.metadata) == metadata
    assert claims.room_config is not None
    [agent] = claims.room_config.agents
    assert agent.agent_name == AGENT_NAME
    assert json.loads(agent.metadata) == metadata

    # The raw payload has nothing beyond what we grant (no sip, agent, hidden, ...).
    payload = jwt.decode(body["token"], API_SECRET, algorithms=["HS256"], issuer=API_KEY)
    assert set(payload) == {"sub", "iss", "nbf", "exp", "name", "metadata", "video", "roomConfig"}
    assert payload["video"] == {**EXPECTED_VIDEO_GRANTS, "room": body["room"]}
    assert abs(payload["exp"] - now - TOKEN_TTL_S) <= 1
    expires_at = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert expires_at.timestamp() == payload["exp"]

    [call] = await server.core.list_calls()
    assert (call.call_id, call.device_id, call.room) == (call_id, enrolled.device_id, body["room"])
    assert call.trigger == "wake_word"
    assert call.token_expires_at == payload["exp"]
    assert call.ended_at is None


async def test_device_cannot_choose_room_identity_or_grants(
    server: BackendServer, api: Api, enrolled: TestDevice
) -> None:
    response = await api.start_call(
        enrolled,
        {
            "room": "lobby",
            "identity": "admin",
            "grants": {"roomAdmin": True, "roomCreate": True, "canPublishSources": ["camera"]},
            "agent_name": "evil-agent",
            "ttl": 86400,
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["room"] == f"call-{body['call_id']}"
    assert body["identity"] == f"device-{enrolled.device_id}"
    payload = jwt.decode(body["token"], API_SECRET, algorithms=["HS256"], issuer=API_KEY)
    assert payload["sub"] == f"device-{enrolled.device_id}"
    assert payload["video"] == {**EXPECTED_VIDEO_GRANTS, "room": body["room"]}
    assert payload["roomConfig"]["agents"][0]["agentName"] == AGENT_NAME
    assert abs(payload["exp"] - time.time() - TOKEN_TTL_S) <= 1


async def test_every_call_gets_a_fresh_room(api: Api, enrolled: TestDevice) -> None:
    rooms = set()
    for _ in range(3):
        response = await api.start_call(enrolled)
        assert response.status_code == 201
        rooms.add(response.json()["room"])
    assert len(rooms) == 3


@pytest.mark.parametrize("payload", [{}, {"trigger": "doorbell"}, {"trigger": 1}])
async def test_bad_trigger_is_bad_request(
    server: BackendServer, api: Api, enrolled: TestDevice, payload: dict[str, object]
) -> None:
    response = await api.send("POST", "/v1/calls", enrolled, payload)
    assert_refused(response, 400, "bad_request")
    assert await server.core.list_calls() == []


async def test_end_call(
    server: BackendServer, api: Api, enrolled: TestDevice, clock: FakeClock
) -> None:
    call_id = (await api.start_call(enrolled)).json()["call_id"]
    clock.advance(42)
    path = f"/v1/calls/{call_id}/end"
    response = await api.send("POST", path, enrolled, {"reason": "user", "duration_ms": 41500})
    assert response.status_code == 200, response.text
    ended_at = datetime.fromtimestamp(int(clock.now), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert response.json() == {"call_id": call_id, "ended_at": ended_at}
    [call] = await server.core.list_calls()
    assert (call.ended_at, call.end_reason, call.duration_ms) == (clock.now, "user", 41500)


@pytest.mark.parametrize(
    "reason", ["user_hangup", "", "user\x1b[2J", "USER", 7, None, "agent_left " * 30]
)
async def test_end_reason_outside_the_vocabulary_is_refused(
    server: BackendServer, api: Api, enrolled: TestDevice, reason: object
) -> None:
    call_id = (await api.start_call(enrolled)).json()["call_id"]
    response = await api.send(
        "POST", f"/v1/calls/{call_id}/end", enrolled, {"reason": reason, "duration_ms": 1}
    )
    assert_refused(response, 400, "bad_request")
    [call] = await server.core.list_calls()
    assert call.ended_at is None and call.end_reason is None


async def test_end_of_another_devices_call_is_unknown(
    server: BackendServer, api: Api, enrolled: TestDevice
) -> None:
    call_id = (await api.start_call(enrolled)).json()["call_id"]
    other = TestDevice()
    assert (await api.enroll(other, await server.core.create_enrollment_code())).status_code == 201
    for target in (call_id, "c-0000000000000000"):
        response = await api.send(
            "POST", f"/v1/calls/{target}/end", other, {"reason": "user", "duration_ms": 1}
        )
        assert_refused(response, 404, "unknown_call")
    [call] = await server.core.list_calls()
    assert call.ended_at is None


async def test_calls_are_rate_limited_per_device(tmp_path: Path, clock: FakeClock) -> None:
    config = load_config(write_config(tmp_path, max_per_minute=2))
    async with (
        asyncio.timeout(TIMEOUT_S),
        BackendServer(config, port=0, clock=clock) as server,
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT_S) as client,
    ):
        api = Api(client, clock)
        device = TestDevice()
        assert (
            await api.enroll(device, await server.core.create_enrollment_code())
        ).status_code == 201
        for _ in range(2):
            assert (await api.start_call(device)).status_code == 201
        clock.advance(10)
        response = await api.start_call(device)
        assert_refused(response, 429, "rate_limited")
        assert response.headers["Retry-After"] == "50"
        assert len(await server.core.list_calls()) == 2
        clock.advance(51)
        assert (await api.start_call(device)).status_code == 201


async def test_unknown_route_is_json_error(api: Api) -> None:
    response = await api.send("GET", "/v1/nothing", None)
    assert_refused(response, 404, "not_found")
    response = await api.send("DELETE", "/v1/calls", None)
    assert_refused(response, 405, "method_not_allowed")


async def test_tokens_secrets_and_signatures_are_not_logged(
    server: BackendServer, api: Api, enrolled: TestDevice, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    body = json.dumps({"trigger": "button"}).encode()
    headers = enrolled.headers("POST", "/v1/calls", body, timestamp=int(api.clock.now))
    response = await api.client.post("/v1/calls", content=body, headers=headers)
    assert response.status_code == 201
    refused = await api.start_call(enrolled, signer=TestDevice().key)
    assert refused.status_code == 401
    records = [r for r in caplog.records if r.name.startswith("provisioning")]
    assert any(getattr(r, "call_id", None) == response.json()["call_id"] for r in records)
    dumped = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in (response.json()["token"], headers["X-Device-Signature"], API_SECRET):
        assert secret not in dumped
    assert response.json()["token"] not in repr(await server.core.list_calls())


async def test_oversized_body_is_refused(server: BackendServer, api: Api) -> None:
    response = await api.send(
        "POST", "/v1/enroll", TestDevice(), raw=b"x" * 100_000, device_id=None
    )
    assert_refused(response, 413, "request_too_large")
    assert await server.core.list_devices() == []
