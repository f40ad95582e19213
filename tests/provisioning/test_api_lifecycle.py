"""Held grants, starting a held call, rejoining, revocation that ends calls (SQLite, PostgreSQL)."""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import pytest

from provisioning.http import BackendServer
from provisioning.rooms import RecordingRoomService

from .conftest import API_SECRET, Api, FakeClock, TestDevice, assert_refused
from .test_livekit_webhooks import deliver, identity, make_event

pytestmark = pytest.mark.integration


async def hold(api: Api, device: TestDevice) -> dict[str, Any]:
    response = await api.send("POST", "/v1/grants", device, {})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


async def post(api: Api, device: TestDevice, path: str, payload: Any) -> httpx.Response:
    return await api.send("POST", path, device, payload)


async def test_a_held_grant_is_a_token_but_not_a_call(
    server: BackendServer, api: Api, enrolled: TestDevice
) -> None:
    grant = await hold(api, enrolled)
    assert set(grant) == {
        "server_url",
        "token",
        "room",
        "identity",
        "call_id",
        "expires_at",
        "provider",
    }
    assert grant["room"] == f"call-{grant['call_id']}"
    claims = jwt.decode(grant["token"], API_SECRET, algorithms=["HS256"], audience=None)
    assert claims["video"]["room"] == grant["room"]
    assert claims["video"]["canPublishSources"] == ["microphone"]
    assert claims["sub"] == identity(enrolled)
    # Not a call until used.
    assert await server.core.list_calls() == []


async def test_using_a_held_grant_records_the_call_once(
    server: BackendServer, api: Api, enrolled: TestDevice, clock: FakeClock
) -> None:
    grant = await hold(api, enrolled)
    clock.advance(200)
    path = f"/v1/calls/{grant['call_id']}/start"
    first = await post(api, enrolled, path, {"trigger": "wake_word"})
    assert first.status_code == 200, first.text
    again = await post(api, enrolled, path, {"trigger": "button"})
    assert again.json() == first.json()
    [call] = await server.core.list_calls()
    assert (call.call_id, call.trigger, call.created_at) == (
        grant["call_id"],
        "wake_word",
        clock.now,
    )
    assert call.room == grant["room"]


async def test_a_grant_is_not_another_devices_and_bad_triggers_are_refused(
    server: BackendServer, api: Api, enrolled: TestDevice
) -> None:
    grant = await hold(api, enrolled)
    other = TestDevice()
    assert (await api.enroll(other, await server.core.create_enrollment_code())).status_code == 201
    path = f"/v1/calls/{grant['call_id']}/start"
    assert_refused(await post(api, other, path, {"trigger": "button"}), 404, "unknown_call")
    assert_refused(
        await post(api, enrolled, "/v1/calls/c-0000000000000000/start", {"trigger": "button"}),
        404,
        "unknown_call",
    )
    assert_refused(await post(api, enrolled, path, {"trigger": "doorbell"}), 400, "bad_request")
    assert await server.core.list_calls() == []


async def test_grants_are_rate_limited_but_calls_are_not_lost(
    server: BackendServer, api: Api, enrolled: TestDevice, clock: FakeClock
) -> None:
    grants = [await hold(api, enrolled) for _ in range(6)]
    refused = await api.send("POST", "/v1/grants", enrolled, {})
    assert_refused(refused, 429, "rate_limited")
    assert int(refused.headers["Retry-After"]) >= 1
    clock.advance(61)
    await hold(api, enrolled)
    # Every grant handed out can still become its call.
    for grant in grants:
        path = f"/v1/calls/{grant['call_id']}/start"
        assert (await post(api, enrolled, path, {"trigger": "button"})).status_code == 200
    assert len(await server.core.list_calls()) == 6


async def test_rejoin_gives_a_fresh_token_for_the_same_room_until_the_call_ends(
    server: BackendServer, api: Api, enrolled: TestDevice, clock: FakeClock
) -> None:
    # A held grant whose start report has not arrived: rejoining records the call.
    grant = await hold(api, enrolled)
    path = f"/v1/calls/{grant['call_id']}/rejoin"
    clock.advance(30)
    response = await post(api, enrolled, path, {"trigger": "button"})
    assert response.status_code == 201, response.text
    again = response.json()
    assert (again["room"], again["call_id"]) == (grant["room"], grant["call_id"])
    claims = jwt.decode(again["token"], API_SECRET, algorithms=["HS256"])
    assert (claims["video"]["room"], claims["sub"]) == (grant["room"], identity(enrolled))
    [call] = await server.core.list_calls()
    assert call.ended_at is None
    end = f"/v1/calls/{grant['call_id']}/end"
    assert (
        await post(api, enrolled, end, {"reason": "connection_lost", "duration_ms": 9})
    ).is_success
    assert_refused(await post(api, enrolled, path, {"trigger": "button"}), 409, "call_ended")


async def test_revocation_ends_live_calls_and_refuses_rejoin_but_not_the_end_report(
    server: BackendServer, api: Api, enrolled: TestDevice, rooms: RecordingRoomService
) -> None:
    live = await api.start_call(enrolled)
    grant = await hold(api, enrolled)
    call_id, room = live.json()["call_id"], live.json()["room"]
    await server.core.revoke_device(enrolled.device_id)
    assert sorted(r for m, r, _ in rooms.calls if m == "delete_room") == sorted(
        [room, grant["room"]]
    )
    rejoin = await post(api, enrolled, f"/v1/calls/{call_id}/rejoin", {"trigger": "button"})
    assert_refused(rejoin, 403, "device_revoked")
    start = await post(api, enrolled, f"/v1/calls/{grant['call_id']}/start", {"trigger": "button"})
    assert_refused(start, 403, "device_revoked")
    assert_refused(await api.send("POST", "/v1/grants", enrolled, {}), 403, "device_revoked")
    # The device still reports how its own call ended.
    end = await post(
        api, enrolled, f"/v1/calls/{call_id}/end", {"reason": "room_closed", "duration_ms": 4}
    )
    assert end.status_code == 200, end.text
    [call] = await server.core.list_calls()
    assert call.end_reason == "room_closed"


async def test_a_revoked_device_joining_with_an_old_token_is_put_out(
    server: BackendServer, api: Api, enrolled: TestDevice, rooms: RecordingRoomService
) -> None:
    room = (await api.start_call(enrolled)).json()["room"]
    joined = make_event("participant_joined", room=room, identity=identity(enrolled))
    assert (await deliver(api, joined)).json()["outcome"] == "recorded"
    assert rooms.calls == []
    await server.core.revoke_device(enrolled.device_id)
    rooms.calls.clear()
    # The stolen token is used again: a new room of the same name.
    again = make_event("participant_joined", room=room, identity=identity(enrolled))
    assert (await deliver(api, again)).json()["outcome"] == "enforced"
    assert ("delete_room", room, "") in rooms.calls
    assert ("remove_participant", room, identity(enrolled)) in rooms.calls
