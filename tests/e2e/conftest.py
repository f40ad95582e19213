"""The local stack and a running device, shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from appliance.daemon import Daemon
from appliance.settings import Settings
from appliance.state import CallTimeline, State, StateChange
from demo.stack import USER_SENTENCE, LocalStack
from demo.tts import synthesize
from provisioning.models import CallRecord


class StateWatcher:
    """Records the daemon's state changes and waits for one."""

    def __init__(self) -> None:
        self.changes: list[StateChange] = []
        self._changed = asyncio.Event()

    def __call__(self, change: StateChange) -> None:
        self.changes.append(change)
        self._changed.set()

    async def wait_for(self, state: State, timeout: float = 30.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not self.changes or self.changes[-1].state is not state:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            seen = ", ".join(f"{c.state.value}({c.reason or ''})" for c in self.changes)
            raise AssertionError(f"no {state.value} within {timeout} s; states: {seen}") from None


class RunningDevice:
    """A daemon running in this process, with what it reported."""

    def __init__(self, daemon: Daemon, watcher: StateWatcher) -> None:
        self.daemon = daemon
        self.watcher = watcher
        self.timelines: list[CallTimeline] = []


@asynccontextmanager
async def run_device(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[RunningDevice]:
    """Run the daemon until the block ends, then stop it as SIGTERM would."""
    watcher = StateWatcher()
    async with Daemon(settings, transport=transport) as daemon:
        running = RunningDevice(daemon, watcher)
        daemon.supervisor.add_observer(watcher)
        daemon.supervisor.add_timeline_observer(running.timelines.append)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        try:
            yield running
        finally:
            stop.set()
            async with asyncio.timeout(15):
                await task


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[LocalStack]:
    async with asyncio.timeout(60), LocalStack(workdir=tmp_path / "stack") as s:
        yield s


@pytest.fixture
async def user_pcm() -> np.ndarray:
    """The kiosk user's sentence, then a pause so the agent hears the end of the turn."""
    speech = await asyncio.wait_for(synthesize(USER_SENTENCE), 30)
    return np.concatenate([speech, np.zeros(48000 * 3 // 2, dtype=np.int16)])


@pytest.fixture
async def device(stack: LocalStack, user_pcm: np.ndarray) -> AsyncIterator[RunningDevice]:
    """A kiosk whose microphone says `user_pcm`, enrolled and READY. No cool-down: tests call
    again straight after a call. Modules with other needs define their own `device`."""
    files = stack.write_device("kiosk-1", user_pcm, agent_join_timeout_s=20, cooldown_s=0)
    settings = await asyncio.wait_for(stack.enroll(files), 10)
    async with run_device(settings) as running:
        await running.watcher.wait_for(State.READY, 15)
        yield running


async def ended_record(stack: LocalStack, call_id: str, timeout: float = 15.0) -> CallRecord:
    """The backend's record of `call_id` once its end has arrived (the device's outbox
    delivers it after the call, not before the device shows READY)."""
    async with asyncio.timeout(timeout):
        while True:
            calls = {c.call_id: c for c in await stack.backend.core.list_calls()}
            record = calls.get(call_id)
            if record is not None and record.ended_at is not None:
                return record
            await asyncio.sleep(0.1)
