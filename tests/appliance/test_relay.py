"""The board's relay on gpiozero's mock pins: a pulse closes it for its time on the clock,
pulses do not overlap, and closing leaves it open."""

from __future__ import annotations

import asyncio

import pytest

from appliance.board_profile import BoardRelay
from appliance.clock import ManualClock
from appliance.status.relay import simulated_relay

pytestmark = pytest.mark.unit


async def test_a_pulse_closes_the_relay_for_its_time_and_pulses_queue() -> None:
    clock = ManualClock()
    relay, pin = simulated_relay(BoardRelay(backend="simulated"), clock=clock)
    first = asyncio.create_task(relay.pulse(1.0))
    second = asyncio.create_task(relay.pulse(0.5))
    await asyncio.sleep(0)
    assert relay.closed and pin.state is True
    async with asyncio.timeout(5):
        await clock.advance(0.9)
        assert relay.closed
        await clock.advance(0.2)  # the first pulse is over; the second has begun
        assert relay.closed and first.done() and not second.done()
        await clock.advance(0.5)
        await asyncio.gather(first, second)
    assert not relay.closed
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
