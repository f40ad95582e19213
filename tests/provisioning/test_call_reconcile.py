"""Call records that reconcile themselves: LiveKit's webhooks (late, twice, out of order or
never) and the sweeper close every call, once, with a duration and one end reason.

Real HTTP, SQLite and PostgreSQL, the recording room service (its `live` is LiveKit's room
list) and a fake clock; each sweep is run by the test (the server's own runs too, and closes
nothing the test's would not)."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections import Counter
from dataclasses import dataclass

import httpx
import pytest
from google.protobuf.json_format import MessageToJson
from livekit.api import WebhookEvent
from livekit.protocol.models import DisconnectReason, ParticipantInfo, Room

from appliance.vocabulary import EndReason
from provisioning.config import Config
from provisioning.errors import StorageUnavailableError
from provisioning.http import BackendServer
from provisioning.models import CallRecord
from provisioning.rooms import RecordingRoomService
from provisioning.storage import open_storage
from provisioning.storage.call_ledger import SqlCallLedger
from provisioning.sweeper import SETTLE_GRACE_S, SWEEP_PERIOD_S, Sweeper

from .conftest import TIMEOUT_S, TOKEN_TTL_S, Api, FakeClock, TestDevice
from .test_livekit_webhooks import post, sign

pytestmark = pytest.mark.integration

AGENT = "agent-AJ_test"


def event(
    kind: str,
    room: str,
    at: float,
    *,
    identity: str = "",
    sid: str = "",
    joined_at: float = 0,
    reason: DisconnectReason = DisconnectReason.UNKNOWN_REASON,
    event_id: str | None = None,
) -> WebhookEvent:
    """A webhook as LiveKit sends it: its own time, the participant with its join time."""
    built = WebhookEvent(
        event=kind,
        id=event_id or "EV_" + secrets.token_hex(6),
        created_at=int(at),
        room=Room(name=room, sid="RM_test"),
    )
    if identity:
        kind_of = ParticipantInfo.Kind.AGENT if identity == AGENT else ParticipantInfo.Kind.STANDARD
        built.participant.CopyFrom(
            ParticipantInfo(
                identity=identity,
                sid=sid or "PA_" + identity,
                joined_at=int(joined_at),
                kind=kind_of,
                disconnect_reason=reason,
            )
        )
    return built


async def deliver(api: Api, webhook: WebhookEvent) -> httpx.Response:
    body = MessageToJson(webhook).encode()
    response = await post(api, body, sign(body))
    assert response.status_code == 200, response.text
    return response


@dataclass
class Call:
    call_id: str
    room: str
    identity: str
    started: float


async def start_call(api: Api, device: TestDevice) -> Call:
    response = await api.start_call(device)
    assert response.status_code == 201, response.text
    body = response.json()
    return Call(body["call_id"], body["room"], body["identity"], api.clock.now)


def joined(call: Call, at: float, sid: str = "PA_1") -> WebhookEvent:
    return event("participant_joined", call.room, at, identity=call.identity, sid=sid, joined_at=at)


def left(
    call: Call, at: float, joined_at: float, reason: DisconnectReason, sid: str = "PA_1"
) -> WebhookEvent:
    return event(
        "participant_left",
        call.room,
        at,
        identity=call.identity,
        sid=sid,
        joined_at=joined_at,
        reason=reason,
    )


def agent(call: Call, kind: str, at: float, joined_at: float) -> WebhookEvent:
    return event(kind, call.room, at, identity=AGENT, sid="PA_agent", joined_at=joined_at)


def finished(call: Call, at: float) -> WebhookEvent:
    return event("room_finished", call.room, at)


async def record(server: BackendServer, call_id: str) -> CallRecord:
    [found] = [c for c in await server.core.list_calls() if c.call_id == call_id]
    return found


async def sweep(server: BackendServer) -> list[CallRecord]:
    async with asyncio.timeout(TIMEOUT_S):
        return await server.sweeper.sweep()


def ends_announced(caplog: pytest.LogCaptureFixture) -> Counter[str]:
    return Counter(
        getattr(r, "call_id", "") for r in caplog.records if r.getMessage() == "call ended"
    )


async def report_end(api: Api, device: TestDevice, call: Call, reason: str) -> httpx.Response:
    payload = {"reason": reason, "duration_ms": 1234}
    return await api.send("POST", f"/v1/calls/{call.call_id}/end", device, payload)


# In order, and the device's own report


async def test_webhooks_close_a_call_whose_device_never_reported(
    server: BackendServer, api: Api, enrolled: TestDevice, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    clock = api.clock
    call = await start_call(api, enrolled)
    t0 = clock.now + 1
    for webhook in [
        agent(call, "participant_joined", t0, t0),
        joined(call, t0),
        left(call, t0 + 42, t0, DisconnectReason.CLIENT_INITIATED),
        agent(call, "participant_left", t0 + 43, t0),
        finished(call, t0 + 63),
    ]:
        await deliver(api, webhook)
    clock.now = t0 + 42 + SETTLE_GRACE_S - 1  # still time for its report, or a rejoin
    await sweep(server)
    assert (await record(server, call.call_id)).ended_at is None

    clock.now = t0 + 42 + SETTLE_GRACE_S
    await sweep(server)
    closed = await record(server, call.call_id)
    assert (closed.end_reason, closed.duration_ms, closed.ended_at) == (
        "device_left",
        42_000,
        t0 + 42,
    )
    assert ends_announced(caplog)[call.call_id] == 1

    # Its report comes at last: the first end stays, and is what the device is answered.
    response = await report_end(api, enrolled, call, "user")
    assert response.status_code == 200, response.text
    assert (await record(server, call.call_id)).end_reason == "device_left"
    assert ends_announced(caplog)[call.call_id] == 1


async def test_the_devices_report_is_never_overwritten(
    server: BackendServer, api: Api, enrolled: TestDevice, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    call = await start_call(api, enrolled)
    t0 = api.clock.now
    await deliver(api, joined(call, t0))
    api.clock.advance(30)
    assert (await report_end(api, enrolled, call, "idle")).status_code == 200
    await deliver(api, left(call, t0 + 30, t0, DisconnectReason.CLIENT_INITIATED))
    await deliver(api, finished(call, t0 + 50))
    api.clock.advance(TOKEN_TTL_S + SETTLE_GRACE_S)
    assert await sweep(server) == []
    ended = await record(server, call.call_id)
    assert (ended.end_reason, ended.duration_ms) == ("idle", 1234)
    assert ends_announced(caplog)[call.call_id] == 1


# Out of order, twice, late


async def test_webhooks_in_any_order_and_twice_give_the_same_record(
    server: BackendServer, api: Api, enrolled: TestDevice, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    t0 = api.clock.now
    calls = [await start_call(api, enrolled) for _ in range(3)]
    for n, call in enumerate(calls):
        webhooks = [
            agent(call, "participant_joined", t0, t0),
            joined(call, t0 + 1),
            left(call, t0 + 21, t0 + 1, DisconnectReason.SIGNAL_CLOSE),
            agent(call, "participant_left", t0 + 22, t0),
            finished(call, t0 + 40),
        ]
        if n == 1:
            webhooks.reverse()
        if n == 2:
            webhooks = [webhooks[i] for i in (4, 2, 2, 0, 1, 3, 1)]  # shuffled, repeated
        for webhook in webhooks:
            await deliver(api, webhook)
    # LiveKit's retry of one leave, with another event id: the same fact again.
    await deliver(api, left(calls[2], t0 + 21, t0 + 1, DisconnectReason.SIGNAL_CLOSE))
    api.clock.now = t0 + 21 + SETTLE_GRACE_S
    await sweep(server)
    records = [await record(server, c.call_id) for c in calls]
    assert {(r.end_reason, r.duration_ms, r.ended_at) for r in records} == {
        ("connection_lost", 20_000, t0 + 21)
    }
    assert all(ends_announced(caplog)[c.call_id] == 1 for c in calls)


async def test_the_same_event_id_twice_is_recorded_once(
    server: BackendServer, api: Api, enrolled: TestDevice
) -> None:
    call = await start_call(api, enrolled)
    webhook = joined(call, api.clock.now)
    first, second = await deliver(api, webhook), await deliver(api, webhook)
    assert (first.json(), second.json()) == ({"outcome": "recorded"}, {"outcome": "duplicate"})


async def test_late_webhooks_after_the_sweeper_closed_the_call_change_nothing(
    server: BackendServer,
    api: Api,
    enrolled: TestDevice,
    rooms: RecordingRoomService,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    rooms.live = set()
    call = await start_call(api, enrolled)
    t0 = api.clock.now
    api.clock.now = (await record(server, call.call_id)).token_expires_at
    await sweep(server)
    closed = await record(server, call.call_id)
    assert (closed.end_reason, closed.duration_ms) == ("connect_failed", 0)
    # Hours late, LiveKit's view arrives: the call keeps its first end.
    api.clock.advance(3600)
    await deliver(api, joined(call, t0 + 2))
    await deliver(api, left(call, t0 + 9, t0 + 2, DisconnectReason.CLIENT_INITIATED))
    await sweep(server)
    assert await record(server, call.call_id) == closed
    assert ends_announced(caplog)[call.call_id] == 1


# Never


async def test_a_grant_that_expired_without_a_join_is_closed_as_connect_failed(
    server: BackendServer, api: Api, enrolled: TestDevice, rooms: RecordingRoomService
) -> None:
    rooms.live = set()
    call = await start_call(api, enrolled)
    expires = (await record(server, call.call_id)).token_expires_at
    api.clock.now = expires - 1
    await sweep(server)
    assert (await record(server, call.call_id)).ended_at is None
    api.clock.now = expires
    await sweep(server)
    closed = await record(server, call.call_id)
    assert (closed.end_reason, closed.duration_ms, closed.ended_at) == (
        "connect_failed",
        0,
        expires,
    )


async def test_a_room_gone_without_any_webhook_closes_its_call(
    server: BackendServer, api: Api, enrolled: TestDevice, rooms: RecordingRoomService
) -> None:
    call = await start_call(api, enrolled)
    rooms.live = {call.room}  # the device is in it; LiveKit's webhooks never arrive
    api.clock.advance(TOKEN_TTL_S + 120)  # a call may outlast its token
    seen = api.clock.now
    await sweep(server)
    assert (await record(server, call.call_id)).ended_at is None

    rooms.live = set()
    api.clock.advance(SWEEP_PERIOD_S)
    await sweep(server)  # gone since now; it may still come back (a rejoin)
    assert (await record(server, call.call_id)).ended_at is None
    api.clock.advance(SETTLE_GRACE_S)
    await sweep(server)
    closed = await record(server, call.call_id)
    assert closed.end_reason == "room_closed"
    assert closed.ended_at == seen
    assert closed.duration_ms == round((seen - call.started) * 1000)


async def test_a_room_that_comes_back_keeps_its_call_open(
    server: BackendServer, api: Api, enrolled: TestDevice, rooms: RecordingRoomService
) -> None:
    call = await start_call(api, enrolled)
    t0 = api.clock.now
    await deliver(api, joined(call, t0))
    rooms.live = set()
    api.clock.advance(20)
    await sweep(server)  # the room is lost: gone from now
    await deliver(api, joined(call, t0 + 30, sid="PA_2"))  # the device rejoined: made again
    rooms.live = {call.room}
    api.clock.advance(SETTLE_GRACE_S * 3)
    await sweep(server)
    assert (await record(server, call.call_id)).ended_at is None


# Reasons and durations


async def test_a_lost_connection_that_rejoins_is_one_call(
    server: BackendServer, api: Api, enrolled: TestDevice
) -> None:
    call = await start_call(api, enrolled)
    t0 = api.clock.now
    await deliver(api, joined(call, t0))
    await deliver(api, left(call, t0 + 10, t0, DisconnectReason.CONNECTION_TIMEOUT))
    await deliver(api, joined(call, t0 + 25, sid="PA_2"))
    api.clock.now = t0 + 10 + SETTLE_GRACE_S
    await sweep(server)
    assert (await record(server, call.call_id)).ended_at is None
    await deliver(
        api, left(call, t0 + 70, t0 + 25, DisconnectReason.CONNECTION_TIMEOUT, sid="PA_2")
    )
    api.clock.now = t0 + 70 + SETTLE_GRACE_S
    await sweep(server)
    closed = await record(server, call.call_id)
    assert (closed.end_reason, closed.duration_ms) == ("connection_lost", 70_000)


@pytest.mark.parametrize(
    ("reason", "agent_leaves", "expected"),
    [
        (DisconnectReason.CLIENT_INITIATED, 5, "agent_left"),  # and the device hung up
        (DisconnectReason.CLIENT_INITIATED, 20, "device_left"),
        (DisconnectReason.PARTICIPANT_REMOVED, 20, "room_closed"),
        (DisconnectReason.ROOM_DELETED, 20, "room_closed"),
        (DisconnectReason.SIGNAL_CLOSE, 20, "connection_lost"),
        (DisconnectReason.UNKNOWN_REASON, 20, "connection_lost"),
    ],
)
async def test_the_end_reason_follows_livekits_disconnect_reason(
    server: BackendServer,
    api: Api,
    enrolled: TestDevice,
    reason: DisconnectReason,
    agent_leaves: int,
    expected: str,
) -> None:
    call = await start_call(api, enrolled)
    t0 = api.clock.now
    await deliver(api, agent(call, "participant_joined", t0, t0))
    await deliver(api, joined(call, t0))
    await deliver(api, agent(call, "participant_left", t0 + agent_leaves, t0))
    await deliver(api, left(call, t0 + 10, t0, reason))
    api.clock.now = t0 + 10 + SETTLE_GRACE_S
    await sweep(server)
    closed = await record(server, call.call_id)
    assert (closed.end_reason, closed.duration_ms) == (expected, 10_000)


async def test_a_room_that_finished_under_the_device_closes_its_call(
    server: BackendServer, api: Api, enrolled: TestDevice, rooms: RecordingRoomService
) -> None:
    call = await start_call(api, enrolled)
    t0 = api.clock.now
    await deliver(api, joined(call, t0))
    await deliver(api, finished(call, t0 + 33))  # its participant_left never comes
    rooms.live = set()
    api.clock.now = t0 + 33 + SETTLE_GRACE_S
    await sweep(server)
    closed = await record(server, call.call_id)
    assert (closed.end_reason, closed.duration_ms, closed.ended_at) == (
        "room_closed",
        33_000,
        t0 + 33,
    )


async def test_without_livekits_room_list_webhooks_still_close_calls(
    server: BackendServer,
    api: Api,
    enrolled: TestDevice,
    rooms: RecordingRoomService,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from provisioning.errors import LiveKitUnavailableError

    caplog.set_level(logging.DEBUG, logger="provisioning.sweeper")
    reported, silent = await start_call(api, enrolled), await start_call(api, enrolled)
    t0 = api.clock.now
    await deliver(api, joined(reported, t0))
    await deliver(api, left(reported, t0 + 5, t0, DisconnectReason.CLIENT_INITIATED))
    rooms.failure = LiveKitUnavailableError("LiveKit is down")
    api.clock.advance(TOKEN_TTL_S + SETTLE_GRACE_S)
    await sweep(server)
    await sweep(server)
    assert (await record(server, reported.call_id)).end_reason == "device_left"
    # Nothing says whether the other one's device is in its room: it waits for LiveKit.
    assert (await record(server, silent.call_id)).ended_at is None
    # Said once per outage (the server's own sweeps may have said it first).
    levels = [r.levelno for r in caplog.records if "room list unavailable" in r.getMessage()]
    assert levels[0] == logging.WARNING and levels.count(logging.WARNING) == 1, levels
    rooms.failure, rooms.live = None, set()
    await sweep(server)
    assert (await record(server, silent.call_id)).end_reason == "connect_failed"


# Several backends, and the target


async def test_two_sweepers_at_once_close_each_call_once(
    server: BackendServer,
    api: Api,
    enrolled: TestDevice,
    rooms: RecordingRoomService,
    config: Config,
    clock: FakeClock,
) -> None:
    rooms.live = set()
    calls = [await start_call(api, enrolled) for _ in range(6)]
    clock.now = max(c.token_expires_at for c in await server.core.list_calls())
    other_closed: list[CallRecord] = []

    async def announce(call: CallRecord) -> None:
        other_closed.append(call)

    async with asyncio.timeout(TIMEOUT_S):
        storage = await open_storage(config.database)
    try:
        other = Sweeper(storage, SqlCallLedger(storage.db), rooms, call_ended=announce, clock=clock)
        async with asyncio.timeout(TIMEOUT_S):
            ours, theirs = await asyncio.gather(server.sweeper.sweep(), other.sweep())
    finally:
        await storage.aclose()
    assert theirs == other_closed
    assert not {c.call_id for c in ours} & {c.call_id for c in theirs}
    assert {c.call_id for c in ours} | {c.call_id for c in theirs} <= {c.call_id for c in calls}
    assert all(c.ended_at is not None for c in await server.core.list_calls())


async def test_a_pass_whose_rings_fail_still_closes_the_calls(
    server: BackendServer,
    api: Api,
    enrolled: TestDevice,
    rooms: RecordingRoomService,
    config: Config,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rooms.live = set()
    call = await start_call(api, enrolled)
    clock.now = (await record(server, call.call_id)).token_expires_at
    closed: list[CallRecord] = []

    async def announce(ended: CallRecord) -> None:
        closed.append(ended)

    async def rings_due() -> int:  # the rings' table, as RingStore.due meets a database down
        raise StorageUnavailableError("database is down")

    async with asyncio.timeout(TIMEOUT_S):
        storage = await open_storage(config.database)
    try:
        sweeper = Sweeper(
            storage,
            SqlCallLedger(storage.db),
            rooms,
            call_ended=announce,
            clock=clock,
            rings_due=rings_due,
        )
        async with asyncio.timeout(TIMEOUT_S):
            swept = await sweeper.sweep()
    finally:
        await storage.aclose()
    assert [c.call_id for c in swept] == [c.call_id for c in closed] == [call.call_id]
    assert (await record(server, call.call_id)).end_reason == "connect_failed"
    assert "rings not resolved: database is down" in [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
    ]


FAULTS = ("drop", "twice", "reverse", "late", "report")


@pytest.mark.parametrize("seed", [1, 2])
async def test_after_any_faults_no_call_is_open_a_ttl_and_a_minute_after_start(
    seed: int,
    config: Config,
    clock: FakeClock,
    rooms: RecordingRoomService,
    server: BackendServer,
    api: Api,
    enrolled: TestDevice,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Calls of every shape under random faults; the backend restarts; a TTL and a minute
    later (swept every period), every call is closed, once, with a duration and a reason."""
    caplog.set_level(logging.INFO)
    rng = random.Random(seed)
    reasons = [
        DisconnectReason.CLIENT_INITIATED,
        DisconnectReason.SIGNAL_CLOSE,
        DisconnectReason.CONNECTION_TIMEOUT,
        DisconnectReason.PARTICIPANT_REMOVED,
        DisconnectReason.ROOM_DELETED,
        DisconnectReason.DUPLICATE_IDENTITY,
    ]
    calls: list[Call] = []
    late: list[WebhookEvent] = []
    rooms.live = set()
    for _ in range(12):
        call = await start_call(api, enrolled)
        calls.append(call)
        t0 = clock.now
        shape = rng.choice(["never", "joined", "rejoined", "finished-only"])
        webhooks: list[WebhookEvent] = []
        if shape != "never":
            webhooks += [agent(call, "participant_joined", t0, t0), joined(call, t0 + 1)]
        if shape == "rejoined":
            webhooks += [
                left(call, t0 + 5, t0 + 1, DisconnectReason.SIGNAL_CLOSE),
                joined(call, t0 + 9, sid="PA_2"),
                left(call, t0 + 30, t0 + 9, rng.choice(reasons), sid="PA_2"),
            ]
        if shape == "joined":
            webhooks.append(left(call, t0 + 30, t0 + 1, rng.choice(reasons)))
        if shape != "never":
            webhooks += [agent(call, "participant_left", t0 + 31, t0), finished(call, t0 + 50)]
        fault = rng.choice(FAULTS)
        if fault == "drop":
            webhooks = [w for w in webhooks if rng.random() < 0.5]
        elif fault == "twice":
            webhooks = webhooks + rng.sample(webhooks, len(webhooks) // 2)
        elif fault == "reverse":
            webhooks.reverse()
        elif fault == "late":
            late += webhooks
            webhooks = []
        elif fault == "report":
            assert (await report_end(api, enrolled, call, "user")).status_code == 200
        for webhook in webhooks:
            await deliver(api, webhook)
        clock.advance(rng.choice([20, 90]))

    # The backend restarts (its sweeper with it); the late webhooks arrive meanwhile.
    await server.aclose()
    async with BackendServer(config, port=0, clock=clock, rooms=rooms) as restarted:
        up = clock.now
        async with httpx.AsyncClient(base_url=restarted.url, timeout=TIMEOUT_S) as client:
            late_api = Api(client, clock)
            rng.shuffle(late)
            for webhook in late:
                await deliver(late_api, webhook)
        while clock.now < up + TOKEN_TTL_S + 60:
            clock.advance(SWEEP_PERIOD_S)
            async with asyncio.timeout(TIMEOUT_S):
                await restarted.sweeper.sweep()
        records = await restarted.core.list_calls()
    assert len(records) == len(calls)
    announced = ends_announced(caplog)
    for r in records:
        assert r.ended_at is not None, r
        assert r.end_reason in EndReason.__members__.values(), r
        assert r.duration_ms is not None and r.duration_ms >= 0, r
        assert announced[r.call_id] == 1, r


# The task


class FailingOnceLedger(SqlCallLedger):
    """A ledger whose first read of the open calls fails as a database that is down."""

    def __init__(self) -> None:
        self.reads = 0
        self.swept = asyncio.Event()

    async def open_calls(self, now: float) -> list[CallRecord]:
        from provisioning.errors import StorageUnavailableError

        self.reads += 1
        if self.reads == 1:
            raise StorageUnavailableError("database is down")
        self.swept.set()
        return []


@pytest.mark.unit
async def test_the_sweeper_is_a_named_task_that_outlives_a_failed_sweep_and_stops_on_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = FailingOnceLedger()

    async def announce(call: CallRecord) -> None:
        raise AssertionError("nothing to close")

    sweeper = Sweeper(
        None,  # type: ignore[arg-type]  # never reached: there are no open calls
        ledger,
        RecordingRoomService(),
        call_ended=announce,
        clock=FakeClock(),
        period_s=0.01,
    )
    async with asyncio.timeout(TIMEOUT_S):
        async with sweeper:
            [task] = [t for t in asyncio.all_tasks() if t.get_name() == "call-sweeper"]
            await ledger.swept.wait()
        assert task.cancelled()
    assert ledger.reads >= 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "call sweep failed: database is down"
    ]


async def test_a_pass_reads_only_calls_that_could_be_over(
    server: BackendServer, api: Api, enrolled: TestDevice
) -> None:
    # A call just started that LiveKit has not told of cannot be settled: a pass skips it,
    # so its cost follows the calls in flight, not every call a busy fleet just started.
    quiet = await start_call(api, enrolled)
    seen = await start_call(api, enrolled)
    await deliver(api, joined(seen, api.clock.now))
    ledger = SqlCallLedger(server.core._storage.db)  # type: ignore[attr-defined]
    due = [c.call_id for c in await ledger.open_calls(api.clock.now)]
    assert due == [seen.call_id]
    api.clock.advance(TOKEN_TTL_S + 1)
    due = [c.call_id for c in await ledger.open_calls(api.clock.now)]
    assert sorted(due) == sorted([quiet.call_id, seen.call_id])
