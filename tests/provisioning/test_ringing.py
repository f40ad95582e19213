"""Ringing people first: the setting checked when stored, the grant that rings, the timer that
hands an unanswered call to the agent or ends it, its tasks, a restart, two backends, and the
join link's ticket. On SQLite and PostgreSQL, with a settable clock and LiveKit's room service
recorded."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from appliance.vocabulary import EndReason, OnNoAnswer
from provisioning.errors import (
    BadRequestError,
    CallEndedError,
    LiveKitUnavailableError,
    RingLinkError,
)
from provisioning.events import EventKind, FleetEvent
from provisioning.http import BackendServer
from provisioning.models import CallRecord
from provisioning.ringing import (
    NO_ANSWER_GRACE_S,
    Ringing,
    RingPlan,
    RingState,
    ring_store_of,
)
from provisioning.rooms import RecordingRoomService
from provisioning.storage import SqlStorage
from provisioning.tokens import OPERATOR_ATTRIBUTE, OPERATOR_ROLE

from .conftest import API_KEY, API_SECRET, LIVEKIT_URL, Api, FakeClock, TestDevice

pytestmark = pytest.mark.integration

RING = {"ring_operators": {"timeout_s": 20, "on_no_answer": "end"}}


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return claims


# -- the setting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"ring_operators": {"timeout_s": 2}}, "ring_operators.timeout_s"),
        ({"ring_operators": {"timeout_s": 601}}, "ring_operators.timeout_s"),
        ({"ring_operators": {"timeout_s": "30"}}, "ring_operators.timeout_s"),
        ({"ring_operators": {"on_no_answer": "voicemail"}}, "ring_operators.on_no_answer"),
        ({"ring_operators": {"enabled": 1}}, "ring_operators.enabled"),
        ({"ring_operators": {"timeout": 30}}, "ring_operators.'timeout'"),
        ({"ring_operators": True}, "ring_operators must be an object"),
    ],
)
async def test_a_bad_ring_setting_is_refused_naming_the_key(
    server: BackendServer, enrolled: TestDevice, settings: Any, named: str
) -> None:
    with pytest.raises(BadRequestError, match=named.replace(".", r"\.")):
        await server.core.set_group_settings("desk", settings, actor="cli")
    with pytest.raises(BadRequestError, match=named.replace(".", r"\.")):
        await server.core.set_device_settings(enrolled.device_id, settings, actor="cli")
    assert await server.core.list_groups() == {}


async def test_a_ringing_device_gets_grants_that_ring_and_dispatch_no_agent(
    server: BackendServer, api: Api, enrolled: TestDevice, caplog: pytest.LogCaptureFixture
) -> None:
    core = server.core
    await core.set_group_settings("desk", RING, actor="cli")
    await core.set_device_group(enrolled.device_id, "desk", actor="cli")
    checked_in = (await api.send("POST", "/v1/checkin", enrolled, {})).json()
    assert "ring_operators" not in checked_in["settings"]  # the backend's: it comes per grant

    pressed = (await api.start_call(enrolled)).json()
    held = (await api.send("POST", "/v1/grants", enrolled, {})).json()
    for grant in (pressed, held):
        assert grant["ring"] == {"timeout_s": 20.0, "on_no_answer": "end"}
        assert "roomConfig" not in _claims(grant["token"])  # nobody but people, for now
        ring = await core.ringing.get(grant["call_id"])
        assert ring is not None and ring.on_no_answer is OnNoAnswer.END
    # The press started its call, so its ring; the held grant rings only once it is used.
    assert (await core.ringing.get(pressed["call_id"])).state is RingState.RINGING  # type: ignore[union-attr]
    assert (await core.ringing.get(held["call_id"])).state is RingState.HELD  # type: ignore[union-attr]
    # This config names no public_url: the links guess http://host:port, and say so once.
    assert caplog.text.count("set [server] public_url") == 1

    # The device's own setting turns it off again, key by key over the group's.
    await core.set_device_settings(
        enrolled.device_id, {"ring_operators": {"enabled": False}}, actor="cli"
    )
    grant = (await api.start_call(enrolled)).json()
    assert "ring" not in grant
    assert _claims(grant["token"])["roomConfig"]["agents"][0]["agentName"]
    await core.aclose()  # the pressed call's timer: cancelled and awaited
    assert core.ringing.timers == frozenset()


# -- the timer ------------------------------------------------------------------------------------


class ManualTime:
    """The fake clock and a sleep that returns when that clock has been advanced far enough."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.clock() + seconds, future))
        await future

    async def advance(self, seconds: float) -> None:
        await asyncio.sleep(0.02)  # timers just spawned reach their sleep first
        self.clock.advance(seconds)
        for _ in range(10):  # wake the due, and let them run (the database on its thread)
            for at, future in list(self._sleepers):
                if at <= self.clock() and not future.done():
                    future.set_result(None)
            await asyncio.sleep(0.02)


@dataclass
class Events:
    emitted: list[FleetEvent] = field(default_factory=list)

    async def emit(self, event: FleetEvent) -> None:
        self.emitted.append(event)


@dataclass
class Closed:
    calls: list[tuple[str, EndReason]] = field(default_factory=list)

    async def __call__(self, call_id: str, reason: EndReason, at: float) -> CallRecord | None:
        self.calls.append((call_id, reason))
        return CallRecord(call_id, "d1", f"call-{call_id}", "button", at - 30, at + 600, at)


@dataclass
class Rig:
    ringing: Ringing
    time: ManualTime
    rooms: RecordingRoomService
    events: Events
    closed: Closed
    storage: SqlStorage

    def another_backend(self) -> Ringing:
        return _ringing(self.storage, self.rooms, self.events, self.closed, self.time)

    def dispatches(self) -> list[str]:
        return [room for method, room, _ in self.rooms.calls if method == "ensure_agent"]


def _ringing(
    storage: SqlStorage, rooms: RecordingRoomService, events: Events, closed: Closed, t: ManualTime
) -> Ringing:
    return Ringing(
        ring_store_of(storage),
        rooms,
        events,
        livekit_url=LIVEKIT_URL,
        api_key=API_KEY,
        api_secret=API_SECRET,
        public_url="https://kiosks.example.org/",
        close_call=closed,
        clock=t.clock,
        sleep=t.sleep,
    )


@pytest.fixture
async def rig(storage: SqlStorage, clock: FakeClock) -> AsyncIterator[Rig]:
    rooms, events, closed, t = RecordingRoomService(), Events(), Closed(), ManualTime(clock)
    ringing = _ringing(storage, rooms, events, closed, t)
    yield Rig(ringing, t, rooms, events, closed, storage)
    async with asyncio.timeout(5):
        await ringing.aclose()


async def _ring(rig: Rig, call_id: str, on_no_answer: OnNoAnswer, timeout_s: float = 30) -> None:
    async with asyncio.timeout(5):
        await rig.ringing.held(
            call_id=call_id,
            device_id="d1",
            room=f"call-{call_id}",
            agent_name="front-desk",
            plan=RingPlan(timeout_s, on_no_answer),
        )
        assert await rig.ringing.start(call_id, name="lobby kiosk", group="site-7") is not None


def _task_named(name: str) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == name and not t.done()]


async def test_an_unanswered_ring_hands_the_call_to_the_agent_at_its_deadline(rig: Rig) -> None:
    await _ring(rig, "c-1", OnNoAnswer.AGENT)
    [event] = rig.events.emitted
    assert event.kind is EventKind.CALL_RINGING
    assert event.data["call_id"] == "c-1" and event.data["device_name"] == "lobby kiosk"
    assert event.data["group"] == "site-7" and event.data["on_no_answer"] == "agent"
    assert event.data["join_url"].startswith("https://kiosks.example.org/operator#ticket=")
    assert rig.ringing.timers == {"c-1"} and _task_named("ring-c-1")
    # A second start signal (the webhook after the press) rings nobody again.
    assert await rig.ringing.start("c-1", name="lobby kiosk", group=None) is None
    await rig.time.advance(29)
    assert rig.dispatches() == []
    await rig.time.advance(1)
    assert rig.dispatches() == ["call-c-1"]
    ring = await rig.ringing.get("c-1")
    assert ring is not None and ring.state is RingState.AGENT
    assert rig.ringing.dispatches_agent(ring)
    assert rig.ringing.timers == frozenset() and not _task_named("ring-c-1")


async def test_an_operator_answering_stops_the_timer(rig: Rig) -> None:
    await _ring(rig, "c-2", OnNoAnswer.AGENT)
    assert not await rig.ringing.answered("c-2", "device-d1")  # the kiosk is nobody's answer
    assert await rig.ringing.answered("c-2", "operator-0a1b2c3d")
    assert not await rig.ringing.answered("c-2", "operator-99999999")  # the first one did
    assert rig.ringing.timers == frozenset()
    answered = [e for e in rig.events.emitted if e.kind is EventKind.CALL_ANSWERED]
    assert [e.data for e in answered] == [
        {"call_id": "c-2", "device_id": "d1", "answered_by": "operator-0a1b2c3d"}
    ]
    await asyncio.sleep(0)
    assert not _task_named("ring-c-2")
    await rig.time.advance(60)
    assert rig.dispatches() == []
    ring = await rig.ringing.get("c-2")
    assert ring is not None and ring.state is RingState.ANSWERED
    assert ring.answered_by == "operator-0a1b2c3d" and not rig.ringing.dispatches_agent(ring)


async def test_no_answer_waits_for_the_devices_report_then_closes_the_call_itself(
    rig: Rig,
) -> None:
    await _ring(rig, "c-3", OnNoAnswer.END, timeout_s=20)
    await rig.time.advance(20)
    ring = await rig.ringing.get("c-3")
    assert ring is not None and ring.state is RingState.NO_ANSWER
    assert rig.closed.calls == [] and rig.dispatches() == []
    await rig.time.advance(NO_ANSWER_GRACE_S)
    assert rig.closed.calls == [("c-3", EndReason.NO_ANSWER)]
    assert ("delete_room", "call-c-3", "") in rig.rooms.calls
    assert rig.ringing.timers == frozenset()

    # An operator just after the backend's deadline, while the kiosk (whose ring began at
    # its own join) still rings: answered, and the backstop stands down.
    await _ring(rig, "c-8", OnNoAnswer.END, timeout_s=20)
    await rig.time.advance(20)
    assert await rig.ringing.answered("c-8", "operator-5e6f7a8b")
    await rig.time.advance(NO_ANSWER_GRACE_S)
    assert rig.closed.calls == [("c-3", EndReason.NO_ANSWER)]

    # The device's own report first: the backend has nothing left to do.
    await _ring(rig, "c-4", OnNoAnswer.END, timeout_s=20)
    await rig.time.advance(20)
    await rig.ringing.ended("c-4")
    await rig.time.advance(NO_ANSWER_GRACE_S)
    assert rig.closed.calls == [("c-3", EndReason.NO_ANSWER)]
    assert rig.ringing.timers == frozenset()


async def test_a_restarted_backend_resolves_overdue_rings_once(rig: Rig) -> None:
    await _ring(rig, "c-5", OnNoAnswer.AGENT)
    async with asyncio.timeout(5):
        await rig.ringing.aclose()  # the backend stops: its timer is cancelled and awaited
    assert not _task_named("ring-c-5")
    await rig.time.advance(45)
    restarted, other = rig.another_backend(), rig.another_backend()
    try:
        async with asyncio.timeout(5):
            # Both sweep at once: one conditional update wins the ring.
            done = await asyncio.gather(restarted.resolve_due(), other.resolve_due())
            assert sorted(done) == [0, 1]
            assert await restarted.resolve_due() == 0
        assert rig.dispatches() == ["call-c-5"]
    finally:
        await restarted.aclose()
        await other.aclose()


async def test_a_dispatch_livekit_refused_is_tried_again(rig: Rig) -> None:
    await _ring(rig, "c-6", OnNoAnswer.AGENT, timeout_s=10)
    rig.rooms.failure = LiveKitUnavailableError("LiveKit create_dispatch failed")
    await rig.time.advance(10)
    ring = await rig.ringing.get("c-6")
    assert ring is not None and ring.state is RingState.RINGING  # still due, soon again
    rig.rooms.failure = None
    await rig.time.advance(5)
    assert rig.dispatches() == ["call-c-6"]
    ring = await rig.ringing.get("c-6")
    assert ring is not None and ring.state is RingState.AGENT


# -- the join link --------------------------------------------------------------------------------


async def test_a_join_link_mints_an_operator_token_while_the_call_lasts(rig: Rig) -> None:
    await _ring(rig, "c-7", OnNoAnswer.AGENT)
    url = rig.events.emitted[0].data["join_url"]
    ticket = url.split("#ticket=", 1)[1]
    records: dict[str, CallRecord | None] = {"c-7": None}  # the start report not there yet

    async def get_call(call_id: str) -> CallRecord | None:
        return records.get(call_id)

    join = await rig.ringing.join(ticket, get_call)
    claims = _claims(join.token)
    assert join.room == "call-c-7" and join.identity.startswith("operator-")
    assert claims["video"]["room"] == "call-c-7" and claims["sub"] == join.identity
    assert claims["attributes"] == {OPERATOR_ATTRIBUTE: OPERATOR_ROLE}
    assert "roomConfig" not in claims and not claims["video"].get("canUpdateOwnMetadata")
    assert join.token not in repr(join)

    forged = ticket[:-2] + ("AA" if not ticket.endswith("AA") else "BB")
    for bad in (forged, "nonsense", 42, None, ticket.replace(".", "")):
        with pytest.raises(RingLinkError):
            await rig.ringing.join(bad, get_call)
    # A forged ticket is refused on its MAC, before its payload is decoded or parsed.
    for payload in (b"{{{ not json", b'{"c": "c-7", "e": 99999999999}'):
        unsigned = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
        with pytest.raises(RingLinkError, match="does not verify"):
            await rig.ringing.join(f"{unsigned}.{'A' * 43}", get_call)
    expired = rig.ringing.ticket("c-7", rig.time.clock() - 1)
    with pytest.raises(RingLinkError, match="expired"):
        await rig.ringing.join(expired, get_call)
    now = rig.time.clock()
    records["c-7"] = CallRecord("c-7", "d1", "call-c-7", "button", now, now + 600, now)
    with pytest.raises(CallEndedError):
        await rig.ringing.join(ticket, get_call)
    # The identity the link minted is the one an answer is known by (one prefix, tokens.py).
    assert await rig.ringing.answered("c-7", join.identity)
