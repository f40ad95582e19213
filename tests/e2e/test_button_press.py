"""`appliance press [--long]` through the control socket, on the simulated board's mock pin."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.state import State
from demo.stack import LocalStack
from tests.e2e.conftest import RunningDevice, ended_record, run_device

pytestmark = pytest.mark.e2e

APPLIANCE = Path(sys.executable).parent / "appliance"


@pytest.fixture
async def device(stack: LocalStack) -> AsyncIterator[RunningDevice]:
    files = stack.write_device("kiosk-press", None, cooldown_s=0)
    settings = await asyncio.wait_for(stack.enroll(files), 10)
    async with run_device(settings) as running:
        await running.watcher.wait_for(State.READY, 15)
        yield running


async def _press(device: RunningDevice, *flags: str) -> None:
    """The command a technician types, through the daemon's real control socket."""
    config = device.daemon.settings.source
    assert config is not None
    proc = await asyncio.create_subprocess_exec(
        str(APPLIANCE), "--config", str(config), "press", *flags,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert (proc.returncode, out.decode().strip()) == (0, "ok"), err.decode()


async def test_a_long_press_cancels_the_call_and_a_short_press_does_not(
    stack: LocalStack, device: RunningDevice
) -> None:
    # Idle, a long press starts nothing: it only ever ends a call or an attempt.
    await _press(device, "--long")
    await asyncio.sleep(2.5)  # the press is ~1.8 s long, and the supervisor gets it at once
    assert [c.state for c in device.watcher.changes][-1] is State.READY
    assert all(c.state is not State.CONNECTING for c in device.watcher.changes)

    # A short press starts a call (a long one never would).
    await _press(device)
    session = await stack.agent.next_session(timeout=20)
    await device.watcher.wait_for(State.IN_CALL, 20)
    call_id = device.watcher.changes[-1].call_id
    assert call_id is not None

    # The long press ends it as a long press does: cancelled, not the short press's `user`.
    await _press(device, "--long")
    await device.watcher.wait_for(State.READY, 15)
    ending = [c for c in device.watcher.changes if c.state is State.ENDING]
    assert [c.reason for c in ending] == ["cancelled"]
    record = await ended_record(stack, call_id)
    assert record.end_reason == "cancelled"
    assert session.room_name == record.room
