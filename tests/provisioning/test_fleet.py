"""Fleet administration in the core and the device API: approval, settings, status, audit."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from provisioning.errors import BadRequestError, InvalidStateError, UnknownDeviceIdError
from provisioning.http import BackendServer
from provisioning.models import DeviceStatus

from .conftest import AGENT_NAME, Api, FakeClock, TestDevice, assert_refused

pytestmark = pytest.mark.integration


async def _pending(server: BackendServer, api: Api, **code: Any) -> TestDevice:
    device = TestDevice()
    enrollment = await server.core.create_enrollment_code(
        label="lobby", requires_approval=True, actor="token:alice", **code
    )
    response = await api.enroll(device, enrollment)
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "pending"
    return device


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return decoded


async def test_a_pending_device_is_refused_distinctly_until_approved(
    server: BackendServer, api: Api, clock: FakeClock
) -> None:
    device = await _pending(server, api)
    assert_refused(await api.start_call(device), 403, "device_pending")
    assert_refused(await api.send("POST", "/v1/grants", device, {}), 403, "device_pending")
    # Its check-ins are refused the same way, but recorded: the admin sees it is alive.
    report = {"firmware": "1.2.3", "board": "pi4", "state": "awaiting_approval"}
    assert_refused(await api.send("POST", "/v1/checkin", device, report), 403, "device_pending")
    [seen] = await server.core.list_devices()
    assert (seen.status, seen.last_seen, seen.state) == (
        DeviceStatus.PENDING,
        clock.now,
        "awaiting_approval",
    )

    approved = await server.core.approve_device(device.device_id, actor="token:bob")
    assert approved.status is DeviceStatus.APPROVED
    response = await api.start_call(device)
    assert response.status_code == 201, response.text
    actions = await server.core.list_admin_actions()
    assert [(a.actor, a.action, a.target) for a in actions[:1]] == [
        ("token:bob", "device.approve", device.device_id)
    ]
    assert actions[-1].actor == "token:alice" and actions[-1].action == "enrollment_code.create"
    assert all(a.at == clock.now for a in actions)


async def test_a_rejected_device_stays_out_and_cannot_be_approved_later(
    server: BackendServer, api: Api
) -> None:
    device = await _pending(server, api)
    await server.core.reject_device(device.device_id, actor="cli")
    assert_refused(await api.start_call(device), 403, "device_rejected")
    assert_refused(await api.send("GET", "/v1/device", device), 403, "device_rejected")
    with pytest.raises(InvalidStateError, match="rejected"):
        await server.core.approve_device(device.device_id, actor="cli")
    with pytest.raises(UnknownDeviceIdError):
        await server.core.approve_device("d-0000000000000000", actor="cli")
    revoked = await server.core.revoke_device(device.device_id, actor="cli")
    assert revoked.status is DeviceStatus.REVOKED
    assert_refused(await api.start_call(device), 403, "device_revoked")


async def test_settings_merge_group_and_device_and_reach_the_check_in_and_the_token(
    server: BackendServer, api: Api, enrolled: TestDevice
) -> None:
    core = server.core
    await core.set_group_settings(
        "lobby",
        {"agent_name": "lobby-agent", "call": {"max_duration_s": 300, "cooldown_s": 5}},
        actor="cli",
    )
    await core.set_device_group(enrolled.device_id, "lobby", actor="cli")
    await core.set_device_settings(
        enrolled.device_id,
        {"call": {"max_duration_s": 120}, "wake_word": {"enabled": False}, "speaker_volume": 0.5},
        actor="cli",
    )
    response = await api.send("POST", "/v1/checkin", enrolled, {"firmware": "1.0"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["agent_name"] == "lobby-agent"
    assert body["settings"] == {
        "agent_name": "lobby-agent",
        "call": {"max_duration_s": 120.0, "cooldown_s": 5.0},
        "wake_word": {"enabled": False},
        "speaker_volume": 0.5,
    }
    grant = (await api.start_call(enrolled)).json()
    [dispatch] = _claims(grant["token"])["roomConfig"]["agents"]
    assert dispatch["agentName"] == "lobby-agent"

    await core.set_device_group(enrolled.device_id, None, actor="cli")
    grant = (await api.start_call(enrolled)).json()
    [dispatch] = _claims(grant["token"])["roomConfig"]["agents"]
    assert dispatch["agentName"] == AGENT_NAME


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"volume": 1}, "volume"),
        ({"call": {"max_duration_s": 5}}, "call.max_duration_s"),
        ({"call": {"idle_timeout_s": "60"}}, "call.idle_timeout_s"),
        ({"wake_word": {"enabled": "yes"}}, "wake_word.enabled"),
        ({"wake_word": {"model": "../../etc/passwd"}}, "wake_word.model"),
        ({"speaker_volume": 1.5}, "speaker_volume"),
        ({"agent_name": "\x1b[31m"}, "agent_name"),
        ([1, 2], "object"),
    ],
)
async def test_bad_settings_are_refused_naming_the_key(
    server: BackendServer, enrolled: TestDevice, settings: Any, named: str
) -> None:
    with pytest.raises(BadRequestError, match=named.replace(".", r"\.")):
        await server.core.set_device_settings(enrolled.device_id, settings, actor="cli")
    [device] = await server.core.list_devices()
    assert dict(device.settings) == {}


async def test_check_ins_record_status_and_offline_devices_show(
    server: BackendServer, api: Api, enrolled: TestDevice, clock: FakeClock
) -> None:
    report = {"firmware": "2.0.1", "board": "respeaker-2mic", "state": "ready", "last_error": "x1"}
    # The device's clock is 7 s ahead of the backend's.
    response = await api.send("POST", "/v1/checkin", enrolled, report, timestamp=int(clock.now) + 7)
    assert response.status_code == 200, response.text
    [device] = await server.core.list_devices()
    assert (device.firmware, device.board, device.state, device.last_error) == (
        "2.0.1",
        "respeaker-2mic",
        "ready",
        "x1",
    )
    assert device.clock_offset_s == 7.0
    assert not server.core.offline(device)
    clock.advance(server.config.fleet.offline_after_s + 1)
    assert server.core.offline(device)
    assert_refused(
        await api.send("POST", "/v1/checkin", enrolled, {"state": "\x1b[2J"}), 400, "bad_request"
    )


async def test_calls_filter_by_device_reason_and_date(
    server: BackendServer, api: Api, enrolled: TestDevice, clock: FakeClock
) -> None:
    other = TestDevice()
    await api.enroll(other, await server.core.create_enrollment_code())
    started = clock.now
    first = (await api.start_call(enrolled)).json()["call_id"]
    clock.advance(100)
    second = (await api.start_call(other)).json()["call_id"]
    end = {"reason": "idle", "duration_ms": 1000}
    await api.send("POST", f"/v1/calls/{second}/end", other, end)
    core = server.core
    assert [c.call_id for c in await core.list_calls(enrolled.device_id)] == [first]
    assert [c.call_id for c in await core.list_calls(end_reason="idle")] == [second]
    assert [c.call_id for c in await core.list_calls(since=started + 50)] == [second]
    assert [c.call_id for c in await core.list_calls(until=started + 50)] == [first]
