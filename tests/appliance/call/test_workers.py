"""Call worker processes for real (no LiveKit server): one waits while idle, each call
gets its own and it ends with the call, a dead one is replaced, closing ends them all."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from appliance.audio.fanout import CaptureFanout
from appliance.call.events import CallEvent
from appliance.call.worker_call import WorkerCall
from appliance.call.workers import CallWorker, CallWorkers
from appliance.clock import SystemClock
from appliance.errors import CallError, TokenRefusedError
from appliance.provisioning_client import CallGrant

pytestmark = pytest.mark.integration


def _running(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return cmdline.read()


@pytest.fixture
async def workers() -> AsyncIterator[CallWorkers]:
    async with asyncio.timeout(60), CallWorkers() as pool:
        yield pool


async def _spare(pool: CallWorkers) -> int:
    async with asyncio.timeout(30):
        while not pool.pids:
            await asyncio.sleep(0.05)
    [pid] = pool.pids
    return pid


async def test_each_call_gets_the_waiting_worker_and_a_fresh_one_waits_after_it(
    workers: CallWorkers,
) -> None:
    first = await _spare(workers)
    assert b"appliance.call.worker" in _cmdline(first)
    async with asyncio.timeout(30):
        worker = await workers.take()
        assert worker.pid == first and worker.alive
        await workers.release(worker)
    assert not _running(first), "the call's worker outlived the call"
    second = await _spare(workers)
    assert second != first and _running(second)


async def test_a_waiting_worker_that_died_is_replaced(workers: CallWorkers) -> None:
    first = await _spare(workers)
    os.kill(first, signal.SIGKILL)
    async with asyncio.timeout(30):
        while first in workers.pids:  # noticed once its socket ends
            await asyncio.sleep(0.05)
        worker = await workers.take()
        try:
            assert worker.pid != first and worker.alive
        finally:
            await workers.release(worker)


async def test_closing_the_pool_ends_every_worker() -> None:
    async with asyncio.timeout(60):
        pool = CallWorkers()
        await pool.start()
        spare = await _spare(pool)
        busy = await pool.take()
        await pool.aclose()
    assert not _running(spare) and not _running(busy.pid)
    with pytest.raises(CallError):
        await pool.take()


async def test_a_worker_outlives_sigterm_until_the_daemon_closes_it(
    workers: CallWorkers,
) -> None:
    """systemd sends SIGTERM to the whole cgroup: the daemon must still end the call."""
    async with asyncio.timeout(30):
        worker = await workers.take()
        try:
            os.kill(worker.pid, signal.SIGTERM)
            await asyncio.sleep(1.0)
            assert worker.alive, "SIGTERM ended the worker before the daemon closed it"
        finally:
            await workers.release(worker)
    assert not _running(worker.pid)


class _NoSpeaker:
    async def write(self, frame: np.ndarray) -> None:
        raise AssertionError("no audio expected")

    async def aclose(self) -> None:
        return None


class _SilentMicrophone:
    async def read(self) -> np.ndarray:
        await asyncio.sleep(0.01)
        return np.zeros(480, dtype=np.int16)

    async def aclose(self) -> None:
        return None


def _grant(url: str) -> CallGrant:
    return CallGrant(
        server_url=url,
        token="not-a-token",
        room="call-c-test",
        identity="device-d-test",
        call_id="c-test",
        expires_at=datetime.now(UTC) + timedelta(minutes=10),
    )


async def test_a_join_that_fails_is_a_call_error_and_its_worker_ends(
    workers: CallWorkers,
) -> None:
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    events: list[CallEvent] = []
    call = WorkerCall(
        _grant(f"ws://127.0.0.1:{port}"),
        workers=workers,
        capture=CaptureFanout(_SilentMicrophone()),
        speaker=_NoSpeaker(),
        on_event=events.append,
        clock=SystemClock(),
        status_topic="kiosk.call_status",
        connect_timeout_s=1.0,
    )
    first = await _spare(workers)
    async with asyncio.timeout(60):
        with pytest.raises(CallError) as raised:
            await call.connect()
        await call.aclose()
    assert not isinstance(raised.value, TokenRefusedError)
    assert not _running(first)
    assert events == []


async def test_a_worker_that_cannot_start_is_a_call_error() -> None:
    async def broken() -> CallWorker:
        raise OSError("no python here")

    async with asyncio.timeout(10), CallWorkers(spawn=broken) as pool:
        with pytest.raises(CallError, match="could not start the call worker"):
            await pool.take()


async def test_the_memory_a_call_freed_is_given_back_after_it() -> None:
    trims: list[int] = []
    async with asyncio.timeout(30), CallWorkers(after_call=lambda: trims.append(1)) as pool:
        worker = await pool.take()
        assert trims == []
        await pool.release(worker)
        assert trims == [1]
