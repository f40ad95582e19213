"""Call policy in the supervisor: idle hang-up, cool-down, triggers while ending, cancel, mute."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from appliance.backoff import Backoff
from appliance.call.events import CallEvent, EndRequested, PartyJoined, SpeechActivity
from appliance.clock import ManualClock
from appliance.provisioning_client import CallGrant
from appliance.settings import CallSettings
from appliance.state import EndReason, State
from appliance.supervisor import Supervisor
from tests.appliance.test_supervisor import (
    FakeBackend,
    FakeCall,
    FakeRecords,
    Harness,
    RecordsAdapter,
)

pytestmark = pytest.mark.unit

Starter = Callable[..., Awaitable[Harness]]


class SlowClosingCall(FakeCall):
    """A call whose closing waits for the test, so the device stays in ENDING."""

    def __init__(self, grant: CallGrant, on_event: Callable[[CallEvent], None]) -> None:
        super().__init__(grant, on_event)
        self.release = asyncio.Event()

    async def aclose(self) -> None:
        await self.release.wait()
        self.closed = True


async def _harness(settings: CallSettings, slow_close: bool = False) -> Harness:
    clock = ManualClock()
    backend = FakeBackend()
    h: Harness

    def make_call(grant: CallGrant, on_event: Callable[[CallEvent], None]) -> FakeCall:
        call = SlowClosingCall(grant, on_event) if slow_close else FakeCall(grant, on_event)
        h.calls.append(call)
        return call

    supervisor = Supervisor(
        backend=backend,
        call_factory=make_call,
        settings=settings,
        clock=clock,
        records=RecordsAdapter(FakeRecords(backend.ended)),
        backoff=Backoff(initial_s=1.0, max_s=8.0, jitter=0.0),
        heartbeat_s=0,
        hold_grant=False,
    )
    h = Harness(clock, backend, supervisor)
    supervisor.add_observer(lambda change: h.states.append(change.state))
    return h


@pytest.fixture
async def run() -> AsyncIterator[Starter]:
    runners: list[tuple[Harness, asyncio.Task[None]]] = []

    async def start(slow_close: bool = False, **policy: object) -> Harness:
        values: dict[str, object] = {"agent_join_timeout_s": 10, "max_duration_s": 300}
        values.update(policy)
        h = await _harness(CallSettings(**values), slow_close)
        runners.append((h, asyncio.create_task(h.supervisor.run())))
        await h.settle()
        return h

    yield start
    for h, task in runners:
        for call in h.calls:
            if isinstance(call, SlowClosingCall):
                call.release.set()
        h.supervisor.stop()
        await h.settle()
        async with asyncio.timeout(5):
            await task


async def _in_call(h: Harness) -> FakeCall:
    await h.press()
    call = h.calls[-1]
    call.emit(PartyJoined("agent-1"))
    await h.settle()
    assert h.supervisor.state is State.IN_CALL
    return call


async def test_hangs_up_when_nobody_speaks(run: Starter) -> None:
    h = await run(idle_timeout_s=30, cooldown_s=0)
    call = await _in_call(h)
    await h.clock.advance(20)
    call.emit(SpeechActivity("device"))  # the person speaks: 30 s from now
    await h.clock.advance(25)
    call.emit(SpeechActivity("agent"))  # then the agent: 30 s from now
    await h.clock.advance(29)
    assert h.supervisor.state is State.IN_CALL
    await h.clock.advance(2)
    assert h.backend.ended == [("c-1", "idle")]
    assert h.supervisor.state is State.READY


async def test_idle_timeout_zero_is_off(run: Starter) -> None:
    h = await run(idle_timeout_s=0, max_duration_s=100)
    await _in_call(h)
    await h.clock.advance(99)
    assert h.supervisor.state is State.IN_CALL
    await h.clock.advance(2)
    assert h.backend.ended == [("c-1", "max_duration")]


async def test_triggers_during_the_cool_down_are_ignored(run: Starter) -> None:
    h = await run(cooldown_s=3)
    await _in_call(h)
    await h.press()
    assert h.supervisor.state is State.READY
    await h.clock.advance(2.9)
    await h.press()
    assert h.supervisor.state is State.READY and len(h.calls) == 1
    await h.clock.advance(0.2)
    await h.press()
    assert h.supervisor.state is State.CONNECTING and len(h.calls) == 2


async def test_trigger_while_ending_is_ignored_by_default(run: Starter) -> None:
    h = await run(slow_close=True, cooldown_s=0)
    call = await _in_call(h)
    await h.press()
    assert h.supervisor.state is State.ENDING
    await h.press()
    assert isinstance(call, SlowClosingCall)
    call.release.set()
    await h.settle()
    assert h.supervisor.state is State.READY and len(h.calls) == 1


async def test_trigger_while_ending_can_redial_once(run: Starter) -> None:
    h = await run(slow_close=True, cooldown_s=5, trigger_while_ending="redial")
    call = await _in_call(h)
    await h.press()
    await h.press()
    await h.press()  # still one redial, not three
    assert isinstance(call, SlowClosingCall)
    call.release.set()
    await h.settle()
    # The person asked during ENDING, so the cool-down does not swallow it.
    assert h.supervisor.state is State.CONNECTING
    assert len(h.calls) == 2
    assert h.states[-3:] == [State.ENDING, State.READY, State.CONNECTING]


async def test_long_press_cancels_and_drops_a_redial(run: Starter) -> None:
    h = await run(slow_close=True, cooldown_s=0, trigger_while_ending="redial")
    h.supervisor.cancel("button")  # when ready: nothing happens
    await h.settle()
    assert h.supervisor.state is State.READY and h.calls == []
    call = await _in_call(h)
    h.supervisor.cancel("button")
    await h.settle()
    assert h.supervisor.state is State.ENDING
    await h.press()  # queues a redial...
    h.supervisor.cancel("button")  # ...which the long press drops
    assert isinstance(call, SlowClosingCall)
    call.release.set()
    await h.settle()
    assert h.supervisor.state is State.READY and len(h.calls) == 1
    assert h.backend.ended == [("c-1", "cancelled")]


async def test_long_press_while_connecting_cancels(run: Starter) -> None:
    h = await run()
    await h.press()
    assert h.supervisor.state is State.CONNECTING
    h.supervisor.cancel("button")
    await h.settle()
    assert h.backend.ended == [("c-1", "cancelled")]
    assert h.supervisor.state is State.READY


async def test_mute_is_told_to_the_call_and_kept_across_changes(
    run: Starter,
) -> None:
    h = await run()
    call = await _in_call(h)
    h.supervisor.set_muted(True)
    h.supervisor.set_muted(True)  # no change, no message
    assert h.supervisor.state is State.IN_CALL
    assert [(c.state, c.reason, c.muted) for c in call.changes] == [
        (State.IN_CALL, None, False),
        (State.IN_CALL, "muted", True),
    ]
    call.emit(EndRequested(EndReason.AGENT_ENDED))
    await h.settle()
    assert call.changes[-1].state is State.ENDING and call.changes[-1].muted
    assert h.backend.ended == [("c-1", "agent_ended")]
