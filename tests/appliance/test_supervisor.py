"""The supervisor's state machine, on fakes of the backend and the call, with a manual clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from appliance.backoff import Backoff
from appliance.call.events import (
    AgentAudioStarted,
    CallEvent,
    Disconnected,
    FarEndAnswered,
    PartyJoined,
    PartyLeft,
    PlatformEnded,
)
from appliance.clock import ManualClock
from appliance.errors import (
    AudioDeviceLostError,
    BackendError,
    BackendUnreachableError,
    CallError,
    CredentialsRejectedError,
    RateLimitedError,
)
from appliance.provisioning_client import CallGrant, DeviceInfo, StatusReport
from appliance.settings import CallSettings
from appliance.state import CallTimeline, State, StateChange
from appliance.supervisor import Supervisor
from appliance.vocabulary import PartyKind

pytestmark = pytest.mark.unit


class FakeBackend:
    """Answers from scripted queues; an exception in a queue is raised instead."""

    def __init__(self) -> None:
        self.check_ins: list[BackendError | None] = []
        self.calls: list[BackendError | None] = []
        self.check_in_times: list[float] = []
        self.ended: list[tuple[str, str]] = []
        self.created = 0
        self.held = 0
        self.grants: list[BackendError | None] = []
        self.grant_ttl_s = 600.0
        self.rejoins: list[str] = []
        self.rejoin_errors: list[BackendError | None] = []
        self.clock: ManualClock | None = None
        self.token_gate: asyncio.Event | None = None  # set: the token "arrives"
        self.reports: list[StatusReport | None] = []
        self.settings: dict[str, Any] = {}
        self.provider = "livekit"  # the grants' provider
        self.progress: list[tuple[str, str]] = []

    async def check_in(self, report: StatusReport | None = None) -> DeviceInfo:
        if self.clock is not None:
            self.check_in_times.append(self.clock.monotonic())
        self.reports.append(report)
        if self.check_ins and (error := self.check_ins.pop(0)) is not None:
            raise error
        return DeviceInfo("d-1", "kiosk", "approved", "demo-agent", dict(self.settings))

    async def create_call(self, trigger: str) -> CallGrant:
        if self.token_gate is not None:
            await self.token_gate.wait()
        if self.calls and (error := self.calls.pop(0)) is not None:
            raise error
        self.created += 1
        return CallGrant(
            server_url="ws://127.0.0.1:1",
            token="t",
            room=f"call-c-{self.created}",
            identity="device-d-1",
            call_id=f"c-{self.created}",
            expires_at=datetime.now(UTC),
            provider=self.provider,
        )

    async def hold_grant(self) -> CallGrant:
        self.held += 1
        if self.grants and (error := self.grants.pop(0)) is not None:
            raise error
        assert self.clock is not None
        return CallGrant(
            server_url="ws://127.0.0.1:1",
            token="held",
            room=f"call-g-{self.held}",
            identity="device-d-1",
            call_id=f"g-{self.held}",
            expires_at=datetime.fromtimestamp(self.clock.time() + self.grant_ttl_s, UTC),
        )

    async def rejoin_call(self, call_id: str, trigger: str) -> CallGrant:
        self.rejoins.append(call_id)
        if self.rejoin_errors and (error := self.rejoin_errors.pop(0)) is not None:
            raise error
        return CallGrant(
            server_url="ws://127.0.0.1:1",
            token="again",
            room=f"call-{call_id}",
            identity="device-d-1",
            call_id=call_id,
            expires_at=datetime.now(UTC),
        )

    async def report_progress(self, call_id: str, event: str) -> None:
        self.progress.append((call_id, event))

    @property
    def clock_offset_s(self) -> float | None:
        return 0.0


class FakeRecords:
    """The durable call records, as lists."""

    def __init__(self, ended: list[tuple[str, str]]) -> None:
        self.ended = ended
        self.started: list[tuple[str, str, bool]] = []
        self.durations: list[int] = []
        self.details: list[str | None] = []
        self.alive = 0
        self.backend_back_count = 0

    def started_(self, call_id: str, trigger: str, *, held: bool) -> None:
        self.started.append((call_id, trigger, held))

    def alive_(self) -> None:
        self.alive += 1

    def ended_(
        self, call_id: str, reason: str, duration_ms: int, detail: str | None = None
    ) -> None:
        self.ended.append((call_id, reason))
        self.durations.append(duration_ms)
        self.details.append(detail)

    def backend_back(self) -> None:
        self.backend_back_count += 1


class RecordsAdapter:
    """`CallRecords` over FakeRecords (whose attributes share the method names)."""

    def __init__(self, records: FakeRecords) -> None:
        self.fake = records

    def started(self, call_id: str, trigger: str, *, held: bool) -> None:
        self.fake.started_(call_id, trigger, held=held)

    def alive(self) -> None:
        self.fake.alive_()

    def ended(self, call_id: str, reason: str, duration_ms: int, detail: str | None = None) -> None:
        self.fake.ended_(call_id, reason, duration_ms, detail)

    def backend_back(self) -> None:
        self.fake.backend_back()


class FakeCall:
    """A call whose events the test emits."""

    def __init__(self, grant: CallGrant, on_event: Callable[[CallEvent], None]) -> None:
        self.grant = grant
        self.emit = on_event
        self.connect_error: CallError | None = None
        self.connect_gate: asyncio.Event | None = None  # set: the room is joined
        self.connected = asyncio.Event()
        self.changes: list[StateChange] = []
        self.closed = False
        self.warnings: list[float] = []
        self.clock: ManualClock | None = None

    async def connect(self) -> None:
        if self.connect_gate is not None:
            await self.connect_gate.wait()
        if self.connect_error is not None:
            raise self.connect_error
        self.connected.set()

    def on_state_change(self, change: StateChange) -> None:
        self.changes.append(change)

    def play_warning(self) -> None:
        self.warnings.append(self.clock.monotonic() if self.clock is not None else 0.0)

    async def aclose(self) -> None:
        self.closed = True


class Harness:
    def __init__(self, clock: ManualClock, backend: FakeBackend, supervisor: Supervisor) -> None:
        self.clock = clock
        self.backend = backend
        self.supervisor = supervisor
        self.calls: list[FakeCall] = []
        self.states: list[State] = []
        self.timelines: list[CallTimeline] = []
        self.runner: asyncio.Task[None]
        self.connect_error: CallError | None = None
        self.connect_errors: list[CallError | None] = []
        self.connect_gate: asyncio.Event | None = None
        self.records = FakeRecords(backend.ended)

    def make_call(self, grant: CallGrant, on_event: Callable[[CallEvent], None]) -> FakeCall:
        call = FakeCall(grant, on_event)
        call.clock = self.clock
        call.connect_error = self.connect_errors.pop(0) if self.connect_errors else None
        call.connect_error = call.connect_error or self.connect_error
        call.connect_gate = self.connect_gate
        self.calls.append(call)
        return call

    async def settle(self) -> None:
        await self.clock.advance(0)

    async def press(self) -> None:
        self.supervisor.trigger("button")
        await self.settle()


async def start_harness(
    *,
    hold_grant: bool = False,
    heartbeat_s: float = 0.0,
    rejoin_window_s: float = 30.0,
    backoff_max_s: float = 8.0,
    max_duration_s: float = 300,
) -> Harness:
    clock = ManualClock()
    backend = FakeBackend()
    backend.clock = clock
    # No idle hang-up or cool-down here: tests/appliance/test_call_policy.py covers them.
    settings = CallSettings(
        agent_join_timeout_s=10,
        max_duration_s=max_duration_s,
        idle_timeout_s=0,
        cooldown_s=0,
        rejoin_window_s=rejoin_window_s,
    )
    h: Harness
    records = FakeRecords(backend.ended)
    supervisor = Supervisor(
        backend=backend,
        call_factory=lambda g, e: h.make_call(g, e),
        settings=settings,
        clock=clock,
        records=RecordsAdapter(records),
        backoff=Backoff(initial_s=1.0, max_s=backoff_max_s, jitter=0.0),
        heartbeat_s=heartbeat_s,
        hold_grant=hold_grant,
    )
    h = Harness(clock, backend, supervisor)
    h.records = records
    supervisor.add_observer(lambda change: h.states.append(change.state))
    supervisor.add_timeline_observer(h.timelines.append)
    h.runner = asyncio.create_task(supervisor.run())
    await h.settle()
    return h


async def stop_harness(h: Harness) -> None:
    h.supervisor.stop()
    await h.settle()
    async with asyncio.timeout(5):
        # A call ending politely may be waiting out a backoff on the manual clock.
        while not h.runner.done():
            await h.clock.advance(1)
            await asyncio.sleep(0)
        await h.runner


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    """Fetch-on-press, no heartbeat: the press path as it was before held grants."""
    h = await start_harness()
    yield h
    await stop_harness(h)


async def test_checks_in_then_is_ready(harness: Harness) -> None:
    assert harness.supervisor.state is State.READY
    assert harness.backend.check_in_times == [harness.clock.monotonic()]


async def test_press_connects_agent_joins_second_press_ends(harness: Harness) -> None:
    await harness.press()
    assert harness.supervisor.state is State.CONNECTING
    call = harness.calls[0]
    assert call.connected.is_set()
    call.emit(PartyJoined("agent-1"))
    await harness.settle()
    assert harness.supervisor.state is State.IN_CALL
    await harness.clock.advance(1.5)
    call.emit(AgentAudioStarted())
    await harness.press()
    assert harness.supervisor.state is State.READY
    assert harness.states == [
        State.READY,
        State.CONNECTING,
        State.IN_CALL,
        State.ENDING,
        State.READY,
    ]
    assert call.closed
    assert harness.backend.ended == [("c-1", "user")]
    # The call observed the state changes made while it was connected, in order.
    assert [c.state for c in call.changes] == [State.IN_CALL, State.ENDING]
    assert call.changes[-1].reason == "user"
    timeline = harness.timelines[0]
    assert timeline.stages_ms["first_agent_audio"] == pytest.approx(1500)
    assert list(timeline.stages_ms) == [
        "trigger",
        "token",
        "connected",
        "agent_joined",
        "first_agent_audio",
        "ended",
    ]


async def test_agent_leaving_ends_the_call(harness: Harness) -> None:
    await harness.press()
    harness.calls[0].emit(PartyJoined("agent-1"))
    harness.calls[0].emit(PartyLeft("agent-1"))
    await harness.settle()
    assert harness.supervisor.state is State.READY
    assert harness.backend.ended == [("c-1", "agent_left")]


async def test_the_platform_ending_the_call_keeps_its_reason_on_the_record(
    harness: Harness,
) -> None:
    await harness.press()
    harness.calls[0].emit(PartyJoined("agent-1"))
    harness.calls[0].emit(PlatformEnded("call_ended (duration 42 s)"))
    await harness.settle()
    assert harness.supervisor.state is State.READY
    assert harness.backend.ended == [("c-1", "platform_ended")]
    assert harness.records.details == ["call_ended (duration 42 s)"]


async def test_an_agent_handing_over_to_a_person_keeps_the_call_until_the_person_leaves(
    harness: Harness,
) -> None:
    await harness.press()
    call = harness.calls[0]
    call.emit(PartyJoined("agent-1"))
    call.emit(PartyJoined("operator-1", PartyKind.PERSON))
    call.emit(PartyLeft("agent-1", PartyKind.AGENT, remaining=1))
    await harness.settle()
    assert harness.supervisor.state is State.IN_CALL
    assert harness.backend.ended == []
    call.emit(PartyLeft("operator-1", PartyKind.PERSON, remaining=0))
    await harness.settle()
    assert harness.supervisor.state is State.READY
    assert harness.backend.ended == [("c-1", "person_left")]


async def test_a_sip_party_alone_is_a_call_and_its_leaving_is_named(harness: Harness) -> None:
    await harness.press()
    harness.calls[0].emit(PartyJoined("sip-1", PartyKind.SIP))
    await harness.settle()
    assert harness.supervisor.state is State.IN_CALL
    harness.calls[0].emit(PartyLeft("sip-1", PartyKind.SIP, remaining=0))
    await harness.settle()
    assert harness.backend.ended == [("c-1", "sip_left")]


async def test_room_closed_by_server_ends_the_call(harness: Harness) -> None:
    await harness.press()
    harness.calls[0].emit(PartyJoined("agent-1"))
    harness.calls[0].emit(Disconnected(room_closed=True, detail="ROOM_DELETED"))
    await harness.settle()
    assert harness.backend.ended == [("c-1", "room_closed")]
    assert harness.supervisor.state is State.READY


async def test_press_while_connecting_ends_once_and_starts_nothing(harness: Harness) -> None:
    harness.supervisor.trigger("button")
    harness.supervisor.trigger("button")  # before the token even arrived
    await harness.settle()
    assert harness.supervisor.state is State.READY
    assert harness.backend.created == 1  # one token, and no room joined with it
    assert harness.calls == []
    assert harness.backend.ended == [("c-1", "user")]


async def test_agent_that_never_joins_fails_the_call_then_ready(harness: Harness) -> None:
    await harness.press()
    await harness.clock.advance(10.1)
    assert harness.supervisor.state is State.CALL_FAILED
    await harness.clock.advance(2.0)
    assert harness.supervisor.state is State.READY
    assert harness.backend.ended == [("c-1", "agent_timeout")]


async def test_connect_failure_returns_to_ready(harness: Harness) -> None:
    harness.connect_error = CallError("refused")
    await harness.press()
    assert harness.supervisor.state is State.CALL_FAILED
    await harness.clock.advance(2.0)
    assert harness.supervisor.state is State.READY
    assert harness.backend.ended == [("c-1", "connect_failed")]


async def test_max_duration_ends_the_call(harness: Harness) -> None:
    await harness.press()
    harness.calls[0].emit(PartyJoined("agent-1"))
    await harness.clock.advance(299)
    assert harness.supervisor.state is State.IN_CALL
    await harness.clock.advance(2)
    assert harness.backend.ended == [("c-1", "max_duration")]


@pytest.mark.parametrize(
    ("error", "fault"),
    [
        (BackendUnreachableError("down"), State.BACKEND_UNREACHABLE),
        (CredentialsRejectedError(401, "unknown_device", "no"), State.CREDENTIALS_REJECTED),
        (CredentialsRejectedError(403, "device_revoked", "no"), State.CREDENTIALS_REJECTED),
    ],
)
async def test_backend_fault_shows_and_recovers_with_backoff(
    harness: Harness, error: BackendError, fault: State
) -> None:
    harness.backend.calls = [error]
    harness.backend.check_ins = [error, error, None]
    await harness.press()
    assert harness.supervisor.state is fault
    assert harness.calls == []
    start = harness.clock.monotonic()
    await harness.clock.advance(30)
    assert harness.supervisor.state is State.READY
    # Three check-ins after the failure: 1 s, then 2 s, then 4 s apart.
    assert [t - start for t in harness.backend.check_in_times[1:]] == [1.0, 3.0, 7.0]


async def test_rate_limit_waits_at_least_retry_after(harness: Harness) -> None:
    harness.backend.calls = [RateLimitedError(30.0, "slow down")]
    await harness.press()
    assert harness.supervisor.state is State.RATE_LIMITED
    start = harness.clock.monotonic()
    await harness.clock.advance(29)
    assert harness.supervisor.state is State.RATE_LIMITED
    await harness.clock.advance(2)
    assert harness.supervisor.state is State.READY
    assert harness.backend.check_in_times[-1] - start == pytest.approx(30.0)


async def test_press_in_fault_state_still_tries_a_call(harness: Harness) -> None:
    harness.backend.calls = [BackendUnreachableError("down")]
    harness.backend.check_ins = [BackendUnreachableError("down")] * 5
    await harness.press()
    assert harness.supervisor.state is State.BACKEND_UNREACHABLE
    await harness.press()
    assert harness.supervisor.state is State.CONNECTING
    harness.calls[0].emit(PartyJoined("agent-1"))
    await harness.settle()
    assert harness.supervisor.state is State.IN_CALL


async def test_stop_during_a_call_ends_it_politely(harness: Harness) -> None:
    await harness.press()
    harness.calls[0].emit(PartyJoined("agent-1"))
    await harness.settle()
    harness.supervisor.stop()
    await harness.settle()
    assert harness.backend.ended == [("c-1", "shutdown")]
    assert harness.calls[0].closed
    assert harness.supervisor.state is State.STOPPING


async def test_an_unexpected_error_never_leaves_the_device_stuck(harness: Harness) -> None:
    harness.backend.calls = [RuntimeError("a bug")]  # type: ignore[list-item]
    await harness.press()
    assert harness.supervisor.state is State.CALL_FAILED
    await harness.clock.advance(2.0)
    assert harness.supervisor.state is State.READY
    await harness.press()
    assert harness.supervisor.state is State.CONNECTING


async def test_cancel_before_the_token_keeps_its_reason(harness: Harness) -> None:
    harness.backend.token_gate = asyncio.Event()
    await harness.press()
    assert harness.supervisor.state is State.CONNECTING
    harness.supervisor.cancel("button")
    harness.backend.token_gate.set()
    await harness.settle()
    assert harness.calls == []
    assert harness.backend.ended == [("c-1", "cancelled")]
    assert harness.supervisor.state is State.READY


async def test_a_call_that_never_connected_reports_no_duration(harness: Harness) -> None:
    harness.connect_error = CallError("refused")
    await harness.press()
    await harness.clock.advance(3.0)
    assert harness.backend.ended == [("c-1", "connect_failed")]
    assert harness.records.durations == [0]


async def test_mute_while_connecting_reaches_the_call(harness: Harness) -> None:
    harness.connect_gate = asyncio.Event()
    await harness.press()
    call = harness.calls[0]
    assert not call.connected.is_set()  # still joining the room
    harness.supervisor.set_muted(True)
    harness.connect_gate.set()
    call.emit(PartyJoined("agent-1"))
    await harness.settle()
    assert [(c.state, c.muted) for c in call.changes] == [
        (State.CONNECTING, True),
        (State.IN_CALL, True),
    ]


async def test_audio_recovering_while_the_backend_is_down_shows_the_backend_fault(
    harness: Harness,
) -> None:
    harness.backend.calls = [BackendUnreachableError("down")]
    harness.backend.check_ins = [BackendUnreachableError("down")] * 4
    await harness.press()
    assert harness.supervisor.state is State.BACKEND_UNREACHABLE
    harness.supervisor.audio_fault(AudioDeviceLostError("unplugged"))
    await harness.clock.advance(2.0)  # a failed check-in meanwhile: audio stays on show
    assert harness.supervisor.state is State.AUDIO_FAULT
    harness.supervisor.audio_recovered()
    assert harness.supervisor.state is State.BACKEND_UNREACHABLE  # not READY: it is still down
    await harness.clock.advance(60)
    assert harness.supervisor.state is State.READY


async def test_hms_calls_end_at_its_five_minutes_with_a_warning_30_s_before() -> None:
    h = await start_harness(max_duration_s=600)
    try:
        h.backend.provider = "hmsvoicedock"
        await h.press()
        call = h.calls[0]
        joined_at = h.clock.monotonic()
        call.emit(PartyJoined("assistant"))
        await h.settle()
        await h.clock.advance(269)
        assert call.warnings == []
        await h.clock.advance(2)
        assert call.warnings == [joined_at + 270]  # 004 l. 154, 172-173: 5 minutes at most
        await h.clock.advance(30)
        assert h.supervisor.state is State.READY
        assert h.backend.ended == [("c-1", "max_duration")]
    finally:
        await stop_harness(h)


async def test_a_phone_rings_until_answered_and_the_backend_hears_of_both() -> None:
    h = await start_harness()
    try:
        h.backend.provider = "click2call"
        await h.press()
        assert h.supervisor.state is State.RINGING
        call = h.calls[0]
        call.emit(PartyJoined("sip_9530251797", PartyKind.SIP))
        await h.settle()
        assert h.supervisor.state is State.RINGING  # the leg in the room is not the answer
        assert h.backend.progress == [("c-1", "joined")]
        call.emit(FarEndAnswered("sip_9530251797"))
        await h.settle()
        assert h.supervisor.state is State.IN_CALL
        assert h.backend.progress == [("c-1", "joined"), ("c-1", "answered")]
        assert call.warnings == []  # no platform limit here
        await h.press()
        assert h.backend.ended == [("c-1", "user")]
    finally:
        await stop_harness(h)


async def test_a_phone_nobody_answers_ends_no_answer() -> None:
    h = await start_harness()
    try:
        h.backend.provider = "click2call"
        await h.press()
        h.calls[0].emit(PartyJoined("sip_9530251797", PartyKind.SIP))
        await h.clock.advance(61)  # PHONE_RING_S
        assert h.supervisor.state is State.READY
        assert h.backend.ended == [("c-1", "no_answer")]
    finally:
        await stop_harness(h)
