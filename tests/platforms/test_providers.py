"""Each platform through the real backend: the documented request, the device's grant, the
upstream failures as distinct refusals, on both databases; the key in no answer or log."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest

from provisioning.core import PLATFORM_CALL_HORIZON_S
from provisioning.errors import HostedCallError
from provisioning.operators import Operators
from provisioning.providers import unverified_claims
from provisioning.providers.base import CallOutcome, call_outcome
from provisioning.sweeper import SETTLE_GRACE_S
from tests.platforms.conftest import PLATFORM_KEY, SETTINGS, Rig
from tests.platforms.fake_base import Failure
from tests.platforms.fake_click2call import FakeClick2Call
from tests.provisioning.conftest import FakeClock, assert_refused

pytestmark = pytest.mark.integration

GRANT_FIELDS = {"server_url", "token", "room", "identity", "call_id", "expires_at", "provider"}


async def test_a_call_gets_the_platforms_room_in_our_shape(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        response = await rig.api.start_call(rig.device)
    assert response.status_code == 201, response.text
    grant = response.json()
    assert set(grant) == GRANT_FIELDS
    assert grant["provider"] == rig.name
    assert grant["server_url"] == rig.fake.livekit_url
    assert grant["call_id"].startswith("c-")
    # Whatever the platform returned or left out, the grant agrees with its LiveKit JWT.
    claims = unverified_claims(grant["token"])
    assert (grant["room"], grant["identity"]) == (claims.room, claims.identity)
    expires = datetime.strptime(grant["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert int(expires.timestamp()) == claims.expires_at
    assert not grant["room"].startswith("call-")  # the platform's room, not ours
    # One request, as documented, checked by the fake (auth header, fields, values).
    assert rig.fake.refused == []
    assert len(rig.fake.received) == 1
    # The call is on the record, open.
    calls = await rig.server.core.list_calls(rig.device.device_id)
    assert [(c.call_id, c.ended_at) for c in calls] == [(grant["call_id"], None)]
    assert PLATFORM_KEY not in response.text
    assert PLATFORM_KEY not in caplog.text


async def test_no_one_is_let_into_a_platforms_room_from_the_fleet(rig: Rig) -> None:
    # An operator token is for the fleet's own LiveKit server; the platform's room is not on
    # it, so the backend refuses one rather than mint a token for a room that is not there.
    response = await rig.api.start_call(rig.device)
    assert response.status_code == 201, response.text
    call = await rig.server.core.get_call(response.json()["call_id"])
    assert call is not None and call.ended_at is None
    device = await rig.server.core.get_device(rig.device.device_id)
    assert not rig.server.core.on_own_livekit(device)
    operators = Operators(rig.server.core, rig.server.config.livekit)
    with pytest.raises(HostedCallError, match="hosted platform's room"):
        await operators.grant(call.call_id, actor="ops")
    # The same device back on the fleet's own server: its calls can be joined again.
    await rig.server.core.set_device_settings(rig.device.device_id, {}, actor="test")
    device = await rig.server.core.get_device(rig.device.device_id)
    assert rig.server.core.on_own_livekit(device)
    grant = await operators.grant(call.call_id, actor="ops")
    assert grant.call_id == call.call_id


async def test_the_request_carries_the_fleets_options_and_correlation(rig: Rig) -> None:
    response = await rig.api.start_call(rig.device)
    assert response.status_code == 201, response.text
    call_id = response.json()["call_id"]
    body = rig.fake.received[0].body
    settings = SETTINGS[rig.name]
    ids = {"device_id": rig.device.device_id, "call_id": call_id}
    if rig.name == "call2me":
        assert body["agent_id"] == settings["agent_id"]
        assert body["user_identity"] == f"device-{rig.device.device_id}"
        assert body["metadata"] == {"desk": "north", **ids}
    elif rig.name == "vatel":
        assert rig.fake.received[0].path == "/v1/agents/7b1d-agent/session-token"
        assert body == {"agent_id": "7b1d-agent", "transport": "webrtc"}
    elif rig.name == "thinnestai":
        assert body == {
            "agent_id": "agent_xyz",
            "context": {"purpose": "support", **ids},
            "max_duration": 300,
        }
    elif rig.name == "click2call":
        assert body == {k: v for k, v in settings.items() if k != "kind"}
    else:
        assert body == {
            "assistant_id": settings["assistant_id"],
            "assistant_override": {"metadata": {**ids, "site": "lobby"}},
        }


async def test_the_check_in_says_fetch_on_the_press_and_hides_the_options(rig: Rig) -> None:
    response = await rig.api.send("POST", "/v1/checkin", rig.device, {})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["call_provider"] == {"kind": rig.name, "hold_grants": False}
    assert "provider" not in body["settings"]  # case, customer and prompts stay here


async def test_no_grant_is_held_for_a_platform(rig: Rig) -> None:
    response = await rig.api.send("POST", "/v1/grants", rig.device, {})
    assert_refused(response, 409, "grants_not_held")
    assert rig.fake.received == []


# (the platform's answer, our status, our code)
FAILURES = [
    (Failure(401, {"detail": "Invalid API key"}), 502, "upstream_key_rejected"),
    (Failure(403, {"detail": "Assistant not found"}), 502, "upstream_key_rejected"),
    (Failure(400, {"detail": "Must provide assistant_id"}), 502, "upstream_bad_request"),
    (Failure(402, {"detail": "Insufficient credits"}), 502, "upstream_out_of_credit"),
    (Failure(429, {"detail": "Maximum 3 concurrent"}, "17"), 429, "upstream_rate_limited"),
    (Failure(500, {"detail": "Failed to create"}), 503, "upstream_unavailable"),
    (Failure(503), 503, "upstream_unavailable"),
]


@pytest.mark.parametrize(("failure", "status", "code"), FAILURES, ids=lambda v: str(v)[:24])
async def test_each_upstream_failure_is_its_own_refusal(
    rig: Rig, failure: Failure, status: int, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    rig.fake.failures.append(failure)
    with caplog.at_level(logging.DEBUG):
        response = await rig.api.start_call(rig.device)
    assert_refused(response, status, code)
    if code == "upstream_rate_limited":
        assert response.headers["Retry-After"] == "17"
    if code == "upstream_unavailable":
        assert int(response.headers["Retry-After"]) > 0
    # The press was a call attempt: recorded, and ended connect_failed at once.
    (call,) = await rig.server.core.list_calls(rig.device.device_id)
    assert call.end_reason == "connect_failed" and call.duration_ms == 0
    assert PLATFORM_KEY not in response.text
    assert PLATFORM_KEY not in caplog.text
    assert any(getattr(r, "error_code", None) == code for r in caplog.records)


@pytest.mark.parametrize("platform_timeout_s", [1])
async def test_a_platform_that_answers_too_late_is_unavailable(rig: Rig) -> None:
    # The backend waits timeout_s (1 s) and no longer; the fake would answer after 3 s.
    rig.fake.delay_s = 3.0
    async with asyncio.timeout(10):
        response = await rig.api.start_call(rig.device)
    assert_refused(response, 503, "upstream_unavailable")


async def test_a_refused_device_costs_no_upstream_request(rig: Rig) -> None:
    await rig.server.core.revoke_device(rig.device.device_id, actor="test")
    response = await rig.api.start_call(rig.device)
    assert response.status_code == 403, response.text
    assert rig.fake.received == []


async def test_a_platform_call_is_rejoined_only_as_call2me_reissues(rig: Rig) -> None:
    response = await rig.api.start_call(rig.device)
    first = response.json()
    rejoin = await rig.api.send(
        "POST", f"/v1/calls/{first['call_id']}/rejoin", rig.device, {"trigger": "button"}
    )
    if rig.name != "call2me":
        assert_refused(rejoin, 409, "rejoin_unsupported")
        return
    # 000 l. 66: reissue and reconnect. A fresh token is a fresh session in a new room,
    # continuing the same call on our record.
    assert rejoin.status_code == 201, rejoin.text
    second = rejoin.json()
    assert second["call_id"] == first["call_id"] and second["provider"] == "call2me"
    assert second["room"] != first["room"]
    assert len(rig.fake.received) == 2 and rig.fake.refused == []
    calls = await rig.server.core.list_calls(rig.device.device_id)
    assert [(c.call_id, c.ended_at) for c in calls] == [(first["call_id"], None)]


async def test_the_platforms_own_reason_is_kept_on_the_record(rig: Rig) -> None:
    call_id = (await rig.api.start_call(rig.device)).json()["call_id"]
    path = f"/v1/calls/{call_id}/end"
    for bad in ("call\x1b[2Jended", "x" * 201, 42):
        body = {"reason": "platform_ended", "duration_ms": 1200, "detail": bad}
        assert_refused(await rig.api.send("POST", path, rig.device, body), 400, "bad_request")
    body = {
        "reason": "platform_ended",
        "duration_ms": 1200,
        "detail": "agent_hangup (duration 3 s)",
    }
    response = await rig.api.send("POST", path, rig.device, body)
    assert response.status_code == 200, response.text
    (call,) = await rig.server.core.list_calls(rig.device.device_id)
    assert (call.end_reason, call.end_detail) == ("platform_ended", "agent_hangup (duration 3 s)")


async def test_click2call_is_dialed_after_the_join_answered_and_hung_up(rig: Rig) -> None:
    call_id = (await rig.api.start_call(rig.device)).json()["call_id"]
    path = f"/v1/calls/{call_id}"
    for event in ("joined", "answered"):
        response = await rig.api.send("POST", f"{path}/progress", rig.device, {"event": event})
        assert response.status_code == 200, response.text
    bad = await rig.api.send("POST", f"{path}/progress", rig.device, {"event": "bored"})
    assert_refused(bad, 400, "bad_request")
    end = {"reason": "sip_left", "duration_ms": 5000}
    assert (await rig.api.send("POST", f"{path}/end", rig.device, end)).status_code == 200
    (call,) = await rig.server.core.list_calls(rig.device.device_id)
    if rig.name != "click2call":
        # No call control on the other platforms: nothing asked upstream after the token.
        assert len(rig.fake.received) == 1 and call.outcome is None
        return
    assert isinstance(rig.fake, FakeClick2Call)
    # 003 l. 55-67, 85-87: /connect, /status ANSWERED, /hangup, for the bridge's call id.
    upstream = call.upstream_call_id
    assert upstream is not None and upstream.startswith("c2c_")
    assert [(step, c, dict(body)) for step, c, body in rig.fake.control] == [
        ("connect", upstream, {}),
        ("status", upstream, {"status": "ANSWERED"}),
        ("hangup", upstream, {}),
    ]
    assert rig.fake.refused == [] and call.outcome == "ANSWERED"
    # The server-to-server calls carry the key; the device never had it.
    late = await rig.api.send("POST", f"{path}/progress", rig.device, {"event": "answered"})
    assert_refused(late, 409, "call_ended")


@pytest.mark.parametrize("platform_name", ["click2call"])
async def test_click2call_is_asked_to_dial_again_while_it_cannot_see_the_microphone(
    rig: Rig,
) -> None:
    # LiveKit lists the kiosk's track a little after its publish returned: a bridge that
    # looks for it refuses the first /connect or two.
    assert isinstance(rig.fake, FakeClick2Call)
    looks = iter([False, False, True])

    async def published(room: str) -> bool:
        return next(looks, False)

    rig.fake.published = published
    call_id = (await rig.api.start_call(rig.device)).json()["call_id"]
    path = f"/v1/calls/{call_id}/progress"
    response = await rig.api.send("POST", path, rig.device, {"event": "joined"})
    assert response.status_code == 200, response.text
    assert [step for step, _c, _b in rig.fake.control] == ["connect"] * 3
    assert len(rig.fake.refused) == 2

    # Never seen: refused after the last try, and the device is told.
    rig.fake.control.clear()
    call_id = (await rig.api.start_call(rig.device)).json()["call_id"]
    path = f"/v1/calls/{call_id}/progress"
    response = await rig.api.send("POST", path, rig.device, {"event": "joined"})
    assert_refused(response, 502, "upstream_bad_request")
    assert [step for step, _c, _b in rig.fake.control] == ["connect"] * 4


@pytest.mark.parametrize("platform_name", ["click2call"])
async def test_click2call_unanswered_or_failed_is_hung_up_with_its_outcome(rig: Rig) -> None:
    assert isinstance(rig.fake, FakeClick2Call)
    outcomes = []
    for reason in ("no_answer", "connect_failed"):
        call_id = (await rig.api.start_call(rig.device)).json()["call_id"]
        end = {"reason": reason, "duration_ms": 0}
        response = await rig.api.send("POST", f"/v1/calls/{call_id}/end", rig.device, end)
        assert response.status_code == 200
        outcomes.append(
            next(c.outcome for c in await rig.server.core.list_calls() if c.call_id == call_id)
        )
    assert outcomes == ["NOT_ANSWERED", "FAILED"]
    assert [step for step, _c, _b in rig.fake.control] == ["hangup", "hangup"]


@pytest.mark.parametrize("platform_name", ["click2call"])
async def test_click2call_closed_by_the_sweeper_is_hung_up_with_its_outcome(
    rig: Rig, clock: FakeClock
) -> None:
    """Every close, not only the device's report, hangs up the bridge (003 l. 86)."""
    assert isinstance(rig.fake, FakeClick2Call)
    call_id = (await rig.api.start_call(rig.device)).json()["call_id"]
    joined = {"event": "joined"}
    response = await rig.api.send("POST", f"/v1/calls/{call_id}/progress", rig.device, joined)
    assert response.status_code == 200
    rig.rooms.live = set()  # the platform's room is not on our LiveKit
    clock.advance(PLATFORM_CALL_HORIZON_S + SETTLE_GRACE_S + 60)  # its device never reported
    async with asyncio.timeout(30):
        [closed] = await rig.server.sweeper.sweep()
    assert closed.call_id == call_id
    (call,) = await rig.server.core.list_calls(rig.device.device_id)
    assert (call.end_reason, call.outcome) == ("connect_failed", "FAILED")
    upstream = call.upstream_call_id
    assert [(step, c) for step, c, _b in rig.fake.control] == [
        ("connect", upstream),
        ("hangup", upstream),
    ]


def test_the_outcome_is_a_closed_vocabulary_checked_before_it_is_stored() -> None:
    # 003 l. 99: "call_status": "ANSWERED", // ANSWERED | NOT_ANSWERED | FAILED
    assert [o.value for o in CallOutcome] == ["ANSWERED", "NOT_ANSWERED", "FAILED"]
    assert call_outcome("NOT_ANSWERED") is CallOutcome.NOT_ANSWERED
    for free in ("answered", "BUSY", "", None, 1):
        with pytest.raises(ValueError, match="outcome must be one of"):
            call_outcome(free)
