"""The board's relay on gpiozero's mock pins: a pulse closes it for its time on the clock,
one asked for meanwhile is refused, and closing leaves it open."""

from __future__ import annotations

import asyncio

import pytest

from appliance.board_profile import BoardRelay
from appliance.clock import ManualClock
from appliance.status.relay import simulated_relay

pytestmark = pytest.mark.unit


async def test_a_pulse_closes_the_relay_for_its_time_and_one_meanwhile_is_refused() -> None:
    clock = ManualClock()
    relay, pin = simulated_relay(BoardRelay(backend="simulated"), clock=clock)
    closed_at: list[bool] = []
    first = asyncio.create_task(relay.pulse(1.0, closed=lambda: closed_at.append(relay.closed)))
    await asyncio.sleep(0)
    assert relay.closed and pin.state is True and closed_at == [True]
    async with asyncio.timeout(5):
        # Refused at once, not queued: back-to-back pulses would hold the door open.
        assert await relay.pulse(0.5) is False
        await clock.advance(0.9)
        assert relay.closed
        await clock.advance(0.2)
        assert await first is True
        assert not relay.closed
        again = asyncio.create_task(relay.pulse(0.5))
        await asyncio.sleep(0)
        assert relay.closed
        await clock.advance(0.6)
        assert await again is True
    assert [s.state for s in pin.states] == [False, True, False, True, False]
    await relay.aclose()


async def test_an_active_low_relay_drives_its_pin_low_to_close() -> None:
    clock = ManualClock()
    relay, pin = simulated_relay(
        BoardRelay(backend="simulated", pin="GPIO5", active_high=False), clock=clock
    )
    assert pin.state is True  # open: high
    task = asyncio.create_task(relay.pulse(0.1))
    await asyncio.sleep(0)
    assert pin.state is False
    async with asyncio.timeout(5):
        await clock.advance(0.2)
        await task
    assert pin.state is True
    await relay.aclose()
