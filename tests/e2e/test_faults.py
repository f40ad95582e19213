"""Faults injected on the real stack: every call comes back, ends truthfully, and is recorded.

Each test states the figure it checks; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from livekit import api

from appliance.state import State
from demo.stack import LocalStack
from provisioning.models import CallRecord
from tests.e2e.conftest import RunningDevice, ended_record, run_device
from tests.e2e.test_commands import _wait_status

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
STALL_AFTER_REJOINING_S = 3.0


class ExpiredFirstGrant(httpx.AsyncBaseTransport):
    """The real backend, except that the first token it hands out has already expired
    (as a proxy with a stale cache, or a device clock far ahead, would make it)."""

    def __init__(self, stack: LocalStack) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._stack = stack
        self.replaced = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if request.url.path not in ("/v1/grants", "/v1/calls") or self.replaced:
            return response
        await response.aread()
        data = json.loads(response.content)
        claims = api.TokenVerifier(self._stack.livekit.api_key, self._stack.livekit.api_secret)
        grants = claims.verify(data["token"])
        data["token"] = (
            api.AccessToken(self._stack.livekit.api_key, self._stack.livekit.api_secret)
            .with_identity(grants.identity)
            .with_grants(grants.video)  # type: ignore[arg-type]
            .with_ttl(timedelta(seconds=-120))
            .to_jwt()
        )
        self.replaced += 1
        return httpx.Response(response.status_code, json=data, headers={"Date": "now"})

    async def aclose(self) -> None:
        await self._inner.aclose()


@asynccontextmanager
async def _device(
    stack: LocalStack,
    name: str,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    **call: float,
) -> AsyncIterator[RunningDevice]:
    silence = np.zeros(48000, dtype=np.int16)
    files = stack.write_device(name, silence, agent_join_timeout_s=20, cooldown_s=0, **call)
    settings = await asyncio.wait_for(stack.enroll(files), 10)
    async with run_device(settings, transport=transport) as running:
        await running.watcher.wait_for(State.READY, 15)
        yield running


async def _record(stack: LocalStack, call_id: str) -> CallRecord:
    return next(c for c in await stack.backend.core.list_calls() if c.call_id == call_id)


def _states(device: RunningDevice) -> list[State]:
    return [c.state for c in device.watcher.changes]


async def test_an_expired_first_token_still_gives_a_call_on_one_press(
    stack: LocalStack,
) -> None:
    transport = ExpiredFirstGrant(stack)
    async with _device(stack, "kiosk-expired", transport=transport, idle_timeout_s=0) as device:
        assert transport.replaced == 1  # the held grant the device got at check-in
        device.daemon.press()
        # Figure: one press, in_call within 20 s, never call_failed.
        await device.watcher.wait_for(State.IN_CALL, 20)
        assert State.CALL_FAILED not in _states(device)
        assert State.TOKEN_REJECTED not in _states(device)
        call_id = device.watcher.changes[-1].call_id
        assert call_id is not None
        assert (await _record(stack, call_id)).ended_at is None


async def test_livekit_killed_mid_call_comes_back_without_a_press(stack: LocalStack) -> None:
    async with _device(stack, "kiosk-restart", idle_timeout_s=0) as device:
        device.daemon.press()
        await device.watcher.wait_for(State.IN_CALL, 20)
        call_id = device.watcher.changes[-1].call_id
        await stack.livekit.kill()
        await device.watcher.wait_for(State.REJOINING, 10)
        await asyncio.sleep(2)
        await stack.livekit.restart()
        back_at = time.monotonic()
        # Figure: in_call again within the 30 s rejoin window, on the same call, no press.
        await device.watcher.wait_for(State.IN_CALL, 30)
        assert time.monotonic() - back_at < 30
        assert device.watcher.changes[-1].call_id == call_id
        assert State.ENDING not in _states(device)[_states(device).index(State.REJOINING) :]
        session = await stack.agent.next_session(timeout=20)
        assert session is not None
        device.daemon.press()
        record = await ended_record(stack, str(call_id), 20)
        assert record.end_reason == "user"


async def test_revocation_ends_the_call_within_seconds_and_shows_credentials_rejected(
    stack: LocalStack,
) -> None:
    async with _device(stack, "kiosk-revoked", idle_timeout_s=0) as device:
        device.daemon.press()
        await device.watcher.wait_for(State.IN_CALL, 20)
        call_id = str(device.watcher.changes[-1].call_id)
        started = time.monotonic()
        device_id = (await stack.backend.core.list_devices())[-1].device_id
        await stack.backend.core.revoke_device(device_id)
        # Figure: the call ends and credentials_rejected shows within 10 s, never ready.
        await device.watcher.wait_for(State.CREDENTIALS_REJECTED, 10)
        assert time.monotonic() - started < 10
        after = _states(device)[_states(device).index(State.ENDING) :]
        assert State.READY not in after, after
        record = await ended_record(stack, call_id, 10)
        assert record.end_reason == "room_closed"


async def test_a_call_ending_during_a_backend_outage_is_recorded_after_it_returns(
    stack: LocalStack,
) -> None:
    async with _device(stack, "kiosk-outage", idle_timeout_s=0) as device:
        device.daemon.press()
        await device.watcher.wait_for(State.IN_CALL, 20)
        call_id = str(device.watcher.changes[-1].call_id)
        await stack.backend.aclose()
        device.daemon.press()  # the call ends while the backend is down
        await device.watcher.wait_for(State.BACKEND_UNREACHABLE, 15)
        await asyncio.sleep(5)
        await stack.backend.start()
        back_at = time.monotonic()
        # Figure: the record has its end within 60 s of the backend's return.
        record = await ended_record(stack, call_id, 60)
        assert time.monotonic() - back_at < 60
        assert record.end_reason == "user"
        await device.watcher.wait_for(State.READY, 75)


async def test_a_daemon_killed_mid_call_reports_the_call_after_restart(
    stack: LocalStack,
) -> None:
    files = stack.write_device("kiosk-killed", np.zeros(48000, dtype=np.int16), idle_timeout_s=0)
    await asyncio.wait_for(stack.enroll(files), 10)
    appliance = str(BIN / "appliance")

    async def start() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            appliance,
            "--config",
            str(files.config),
            "run",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

    daemon = await start()
    try:
        await _wait_status(files.config, "ready", 30)
        press = await asyncio.create_subprocess_exec(
            appliance, "--config", str(files.config), "press"
        )
        await asyncio.wait_for(press.wait(), 10)
        await _wait_status(files.config, "in_call", 30)
        await asyncio.sleep(2)
        daemon.send_signal(signal.SIGKILL)
        await asyncio.wait_for(daemon.wait(), 10)
        [call] = [c for c in await stack.backend.core.list_calls() if c.ended_at is None]
        daemon = await start()
        # Figure: the record ends (device_restarted, ~2 s long) within 30 s of the restart.
        record = await ended_record(stack, call.call_id, 30)
        assert record.end_reason == "device_restarted"
        assert record.duration_ms is not None and 0 <= record.duration_ms <= 15_000
        await _wait_status(files.config, "ready", 30)
    finally:
        if daemon.returncode is None:
            daemon.send_signal(signal.SIGTERM)
            await asyncio.wait_for(daemon.wait(), 30)


async def test_a_stalled_livekit_gives_the_call_back_once_it_runs_again(stack: LocalStack) -> None:
    async with _device(stack, "kiosk-stalled", idle_timeout_s=0) as device:
        device.daemon.press()
        await device.watcher.wait_for(State.IN_CALL, 20)
        call_id = device.watcher.changes[-1].call_id
        stack.livekit.stall()
        try:
            await device.watcher.wait_for(State.REJOINING, 20)
            await asyncio.sleep(STALL_AFTER_REJOINING_S)
        finally:
            stack.livekit.unstall()
        # Figure: in_call again, same call, within the rejoin window.
        await device.watcher.wait_for(State.IN_CALL, 30)
        assert device.watcher.changes[-1].call_id == call_id
        assert "agent_left" not in [t.end_reason for t in device.timelines]


async def test_a_hanging_backend_shows_its_fault_and_a_press_still_calls(
    stack: LocalStack,
) -> None:
    hanging: list[asyncio.StreamWriter] = []

    async def accept_and_hang(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hanging.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(accept_and_hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    class ToTheHangingBackend(httpx.AsyncBaseTransport):
        """Check-ins go to a backend that accepts and never answers, once it is switched on."""

        def __init__(self) -> None:
            self.on = False
            self._inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if self.on and request.url.path == "/v1/checkin":
                request.url = request.url.copy_with(port=port)
            return await self._inner.handle_async_request(request)

        async def aclose(self) -> None:
            await self._inner.aclose()

    transport = ToTheHangingBackend()
    try:
        async with _device(stack, "kiosk-hang", transport=transport, idle_timeout_s=0) as device:
            transport.on = True
            device.daemon.supervisor.keeper.wake()
            # Figure: backend_unreachable within the client's 5 s timeout plus slack.
            await device.watcher.wait_for(State.BACKEND_UNREACHABLE, 15)
            device.daemon.press()
            await device.watcher.wait_for(State.IN_CALL, 20)  # the held grant needs no backend
    finally:
        server.close()
        for writer in hanging:
            writer.close()
        await server.wait_closed()
