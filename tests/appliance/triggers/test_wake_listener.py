"""The wake listener's task: inactive once it died, restartable, closed whole."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from appliance.audio.fanout import CaptureFanout
from appliance.audio.simulated import WavMicrophone
from appliance.clock import SystemClock
from appliance.triggers.wake.base import Detection, Pcm16k, WakeDetector
from appliance.triggers.wake.listener import WakeListener

pytestmark = pytest.mark.unit


class FlakyEngine:
    """Fails on its first `failures` batches, then hears nothing; counts what it got."""

    name = "flaky"
    keywords = ("test",)

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.batches = 0
        self.closed = False

    def process(self, pcm: Pcm16k) -> list[Detection]:
        self.batches += 1
        if self.failures:
            self.failures -= 1
            raise RuntimeError("engine fell over")
        return []

    def reset(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


@pytest.fixture
async def capture() -> AsyncIterator[CaptureFanout]:
    fanout = CaptureFanout(WavMicrophone(None))  # live silence, 10 ms frames
    fanout.start()
    yield fanout
    await fanout.aclose()


def _listener(engine: FlakyEngine, capture: CaptureFanout) -> WakeListener:
    return WakeListener(
        WakeDetector(engine, refractory_s=1.0),
        capture=capture,
        on_wake=lambda _detection: None,
        clock=SystemClock(),
    )


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_a_listener_whose_task_died_is_inactive_and_restarts(
    capture: CaptureFanout, caplog: pytest.LogCaptureFixture
) -> None:
    engine = FlakyEngine(failures=1)
    listener = _listener(engine, capture)
    with caplog.at_level(logging.ERROR, logger="appliance.triggers.wake.listener"):
        listener.set_active(True)
        assert listener.active
        await _until(lambda: not listener.active)
    failures = [r for r in caplog.records if r.getMessage() == "wake word listener failed"]
    assert len(failures) == 1 and failures[0].exc_info is not None, "the death is logged once"

    listener.set_active(True)  # what the trigger does on the next state change
    assert listener.active
    await _until(lambda: engine.batches >= 3)
    assert listener.active, "the new task keeps listening"

    await asyncio.wait_for(listener.aclose(), 5)
    assert not listener.active and engine.closed


async def test_switching_off_and_closing_ends_every_task(capture: CaptureFanout) -> None:
    engine = FlakyEngine(failures=0)
    listener = _listener(engine, capture)
    for _ in range(3):
        listener.set_active(True)
        await asyncio.sleep(0)
        listener.set_active(False)
        assert not listener.active
    listener.set_active(True)
    await asyncio.wait_for(listener.aclose(), 5)
    assert not listener.active and engine.closed
    stray = [t for t in asyncio.all_tasks() if t.get_name() == "wake-listener" and not t.done()]
    assert stray == []
    listener.set_active(True)  # a state change after close: ignored
    assert not listener.active
