"""Each call's room lives in a worker process (docs/call-worker.md), on the real stack: the
process ends with its call, and a worker that dies mid-call costs a rejoin, not the call."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from appliance.call.workers import CallWorkers
from appliance.state import State
from demo.stack import LocalStack
from tests.e2e.conftest import RunningDevice, ended_record, run_device

pytestmark = pytest.mark.e2e


@pytest.fixture
async def device(stack: LocalStack) -> AsyncIterator[RunningDevice]:
    silence = np.zeros(48000, dtype=np.int16)
    files = stack.write_device(
        "kiosk-worker", silence, agent_join_timeout_s=20, cooldown_s=0, idle_timeout_s=0
    )
    settings = await asyncio.wait_for(stack.enroll(files), 10)
    async with run_device(settings) as running:
        await running.watcher.wait_for(State.READY, 15)
        yield running


def _workers(device: RunningDevice) -> CallWorkers:
    workers = device.daemon._call_workers
    assert workers is not None
    return workers


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def _one_worker(device: RunningDevice, timeout: float = 30) -> int:
    async with asyncio.timeout(timeout):
        while len(_workers(device).pids) != 1:
            await asyncio.sleep(0.05)
    return _workers(device).pids[0]


async def test_each_call_has_a_worker_process_that_ends_with_it(
    device: RunningDevice,
) -> None:
    waiting = await _one_worker(device)
    used = []
    for _ in range(2):
        device.daemon.press()
        await device.watcher.wait_for(State.IN_CALL, 20)
        # Figure: the call runs in the worker that was waiting before the press.
        assert waiting in _workers(device).pids
        # ... and the next call's worker starts while this one runs (3 s in).
        async with asyncio.timeout(30):
            while len(_workers(device).pids) < 2:
                await asyncio.sleep(0.05)
        used.append(waiting)
        device.daemon.press()
        await device.watcher.wait_for(State.READY, 20)
        waiting = await _one_worker(device)
        assert not _running(used[-1]), "a call's worker outlived its call"
        assert waiting not in used


async def test_a_worker_killed_mid_call_costs_a_rejoin_not_the_call(
    stack: LocalStack, device: RunningDevice
) -> None:
    worker = await _one_worker(device)  # the call takes it
    device.daemon.press()
    await device.watcher.wait_for(State.IN_CALL, 20)
    call_id = device.watcher.changes[-1].call_id
    os.kill(worker, signal.SIGKILL)
    killed_at = time.monotonic()
    await device.watcher.wait_for(State.REJOINING, 10)
    # Figure: in_call again on the same call, within the 30 s rejoin window, without a press.
    await device.watcher.wait_for(State.IN_CALL, 30)
    assert time.monotonic() - killed_at < 30
    states = [c.state for c in device.watcher.changes]
    after = states[states.index(State.REJOINING) :]
    assert State.ENDING not in after, after
    assert device.watcher.changes[-1].call_id == call_id
    assert device.watcher.changes[states.index(State.REJOINING)].reason == "connection_lost"
    assert _workers(device).pids not in ([], [worker])
    device.daemon.press()
    record = await ended_record(stack, str(call_id), 20)
    assert record.end_reason == "user"
