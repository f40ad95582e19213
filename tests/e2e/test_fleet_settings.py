"""Fleet settings on the real stack: an admin's change reaches a running daemon at its next
check-in, without a restart, and the next call follows it."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from appliance.state import CallTimeline, State
from demo.stack import LocalStack
from tests.e2e.conftest import RunningDevice, ended_record, run_device

pytestmark = pytest.mark.e2e


async def test_a_settings_change_applies_at_the_next_check_in_and_to_the_next_call(
    stack: LocalStack,
) -> None:
    files = stack.write_device(
        "kiosk-fleet", np.zeros(48000, dtype=np.int16), idle_timeout_s=0, cooldown_s=0
    )
    settings = await asyncio.wait_for(stack.enroll(files), 10)
    async with run_device(settings) as device:
        await device.watcher.wait_for(State.READY, 15)
        daemon = device.daemon
        assert daemon.supervisor.settings.max_duration_s == settings.call.max_duration_s
        [enrolled] = [d for d in await stack.backend.core.list_devices() if d.name == "kiosk-fleet"]
        await stack.backend.core.set_device_settings(
            enrolled.device_id,
            {"call": {"max_duration_s": 10}, "speaker_volume": 0.5},
            actor="test",
        )
        daemon.supervisor.keeper.wake()  # its next check-in, without waiting a minute
        async with asyncio.timeout(15):
            while daemon.supervisor.settings.max_duration_s != 10:
                await asyncio.sleep(0.1)
        assert daemon.fleet_settings is not None
        assert daemon.fleet_settings.applied["speaker_volume"] == 0.5

        daemon.press()
        await device.watcher.wait_for(State.IN_CALL, 20)
        [timeline] = await _next_timeline(device, 40)
        assert timeline.end_reason is not None and timeline.end_reason.value == "max_duration"
        assert timeline.call_id is not None
        record = await ended_record(stack, timeline.call_id, 20)
        assert record.end_reason == "max_duration"
        assert record.duration_ms is not None and 9_000 <= record.duration_ms <= 13_000
        # The device told the backend how it is.
        [seen] = [d for d in await stack.backend.core.list_devices() if d.name == "kiosk-fleet"]
        assert seen.last_seen is not None and seen.state is not None and seen.firmware


async def _next_timeline(device: RunningDevice, timeout: float) -> list[CallTimeline]:
    async with asyncio.timeout(timeout):
        while not device.timelines:
            await asyncio.sleep(0.1)
    return list(device.timelines)
