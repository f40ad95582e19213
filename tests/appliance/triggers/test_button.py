"""The call and mute buttons on gpiozero's MockFactory pins, timed by a manual clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from appliance.backoff import Backoff
from appliance.call.events import CallEvent, PartyJoined
from appliance.clock import ManualClock
from appliance.provisioning_client import CallGrant
from appliance.settings import BoardButtons, CallSettings
from appliance.state import State
from appliance.supervisor import Supervisor
from appliance.triggers.gpio import GpioButtons
from tests.appliance.test_supervisor import (
    FakeBackend,
    FakeCall,
    FakeRecords,
    Harness,
    RecordsAdapter,
)

pytestmark = pytest.mark.integration

CALL_PIN, MUTE_PIN = 17, 27
DEBOUNCE_S = 0.03


@dataclass
class Rig:
    clock: ManualClock
    factory: MockFactory
    buttons: GpioButtons
    events: list[str] = field(default_factory=list)

    @property
    def call(self) -> MockPin:
        return self.factory.pin(CALL_PIN)

    @property
    def mute(self) -> MockPin:
        return self.factory.pin(MUTE_PIN)

    async def hold(self, pin: MockPin, seconds: float) -> None:
        """Press, hold for `seconds`, release (each edge clean)."""
        pin.drive_low()
        await self.clock.advance(seconds)
        pin.drive_high()
        await self.clock.advance(0.1)


Opener = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def open_rig() -> AsyncIterator[Opener]:
    rigs: list[Rig] = []

    async def open_(mute_kind: str | None = None, **handlers: Callable[..., None]) -> Rig:
        clock = ManualClock()
        factory = MockFactory()
        events: list[str] = []
        profile = BoardButtons(
            backend="gpio",
            call_pin=str(CALL_PIN),
            mute_pin=str(MUTE_PIN) if mute_kind else None,
            mute_kind=mute_kind or "switch",
            debounce_s=DEBOUNCE_S,
        )
        buttons = GpioButtons(
            profile,
            clock=clock,
            long_press_s=1.5,
            on_short=handlers.get("on_short", lambda: events.append("short")),
            on_long=handlers.get("on_long", lambda: events.append("long")),
            on_mute=handlers.get("on_mute", lambda m: events.append(f"mute={m}")),
            pin_factory=factory,
        )
        rig = Rig(clock, factory, buttons, events)
        rigs.append(rig)
        return rig

    yield open_
    for rig in rigs:
        await rig.buttons.aclose()
        rig.factory.close()


async def test_short_press_fires_on_release(open_rig: Opener) -> None:
    rig = await open_rig()
    rig.call.drive_low()
    await rig.clock.advance(0.2)
    assert rig.events == []
    rig.call.drive_high()
    await rig.clock.advance(0.1)
    assert rig.events == ["short"]


async def test_long_press_fires_while_held_and_no_short_after(
    open_rig: Opener,
) -> None:
    rig = await open_rig()
    rig.call.drive_low()
    await rig.clock.advance(1.4)
    assert rig.events == []
    await rig.clock.advance(0.2)
    assert rig.events == ["long"]
    rig.call.drive_high()
    await rig.clock.advance(0.1)
    assert rig.events == ["long"]
    await rig.hold(rig.call, 0.3)  # and the next press is short again
    assert rig.events == ["long", "short"]


async def test_contact_bounce_is_one_press(open_rig: Opener) -> None:
    rig = await open_rig()
    for _ in range(4):  # a bouncing contact: edges 2 ms apart, on press and on release
        rig.call.drive_low()
        await rig.clock.advance(0.002)
        rig.call.drive_high()
        await rig.clock.advance(0.002)
    rig.call.drive_low()
    await rig.clock.advance(0.3)
    for _ in range(3):
        rig.call.drive_high()
        await rig.clock.advance(0.002)
        rig.call.drive_low()
        await rig.clock.advance(0.002)
    rig.call.drive_high()
    await rig.clock.advance(0.1)
    assert rig.events == ["short"]


async def test_a_glitch_shorter_than_the_debounce_is_no_press(
    open_rig: Opener,
) -> None:
    rig = await open_rig()
    rig.call.drive_low()
    await rig.clock.advance(0.01)
    rig.call.drive_high()
    await rig.clock.advance(0.5)
    assert rig.events == []


async def test_mute_switch_follows_its_level(open_rig: Opener) -> None:
    rig = await open_rig(mute_kind="switch")
    assert rig.events == ["mute=False"]  # the switch's position at start is reported
    rig.mute.drive_low()
    await rig.clock.advance(0.1)
    rig.mute.drive_high()
    await rig.clock.advance(0.1)
    assert rig.events == ["mute=False", "mute=True", "mute=False"]
    assert not rig.buttons.muted


async def test_mute_button_toggles(open_rig: Opener) -> None:
    rig = await open_rig(mute_kind="button")
    await rig.hold(rig.mute, 0.2)
    await rig.hold(rig.mute, 0.2)
    await rig.hold(rig.mute, 0.2)
    assert rig.events == ["mute=True", "mute=False", "mute=True"]


@pytest.fixture
async def supervised(open_rig: Opener) -> AsyncIterator[tuple[Rig, Harness]]:
    supervisors: list[Supervisor] = []
    rig = await open_rig(
        on_short=lambda: supervisors[0].trigger("button"),
        on_long=lambda: supervisors[0].cancel("button"),
    )
    backend = FakeBackend()
    h: Harness

    def make_call(grant: CallGrant, on_event: Callable[[CallEvent], None]) -> FakeCall:
        call = FakeCall(grant, on_event)
        h.calls.append(call)
        return call

    supervisor = Supervisor(
        backend=backend,
        call_factory=make_call,
        settings=CallSettings(cooldown_s=0.5, idle_timeout_s=0),
        clock=rig.clock,
        records=RecordsAdapter(FakeRecords(backend.ended)),
        backoff=Backoff(initial_s=1.0, max_s=8.0, jitter=0.0),
        heartbeat_s=0,
        hold_grant=False,
    )
    supervisors.append(supervisor)
    h = Harness(rig.clock, backend, supervisor)
    runner = asyncio.create_task(supervisor.run())
    await h.settle()
    yield rig, h
    supervisor.stop()
    await h.settle()
    async with asyncio.timeout(5):
        await runner


async def test_press_while_connecting_ends_the_call_once(
    supervised: tuple[Rig, Harness],
) -> None:
    rig, h = supervised
    await rig.hold(rig.call, 0.2)
    assert h.supervisor.state is State.CONNECTING
    # A bouncy second press while still connecting: one end, no second call.
    for _ in range(3):
        rig.call.drive_low()
        await rig.clock.advance(0.001)
        rig.call.drive_high()
        await rig.clock.advance(0.001)
    await rig.hold(rig.call, 0.2)
    assert h.supervisor.state is State.READY
    assert len(h.calls) == 1 and h.backend.ended == [("c-1", "user")]
    await rig.clock.advance(1)  # past the cool-down, a press calls again
    await rig.hold(rig.call, 0.2)
    assert h.supervisor.state is State.CONNECTING and len(h.calls) == 2


async def test_long_press_cancels_a_call(supervised: tuple[Rig, Harness]) -> None:
    rig, h = supervised
    await rig.hold(rig.call, 0.2)
    h.calls[0].emit(PartyJoined("agent-1"))
    await h.settle()
    assert h.supervisor.state is State.IN_CALL
    await rig.hold(rig.call, 2.0)
    assert h.backend.ended == [("c-1", "cancelled")]
    assert h.supervisor.state is State.READY
