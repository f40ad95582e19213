"""The demo agent's worker side: re-registration, and the standalone command line."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from demo.agent import DemoAgent, agent_ws_url
from demo.livekit_server import LiveKitServer
from tests.demo.conftest import AGENT_NAME
from tests.demo.device import DeviceParticipant, mint_device_token

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.unit
def test_agent_ws_url_maps_every_scheme() -> None:
    assert agent_ws_url("ws://127.0.0.1:7880") == "ws://127.0.0.1:7880/agent"
    assert agent_ws_url("https://lk.example.org/") == "wss://lk.example.org/agent"
    assert agent_ws_url("http://h:1") == "ws://h:1/agent"


@pytest.mark.e2e
async def test_worker_registers_again_after_its_connection_drops(
    livekit_server: LiveKitServer, demo_agent: DemoAgent
) -> None:
    assert demo_agent.registrations == 1
    first_worker = demo_agent.worker_id
    ws = demo_agent._ws  # no public way to cut the socket, short of killing the server
    assert ws is not None
    async with asyncio.timeout(10):
        await ws.close()
        await demo_agent.wait_registered(timeout=10, after=1)
    assert demo_agent.worker_id != first_worker

    # Dispatch still reaches the re-registered worker.
    device = DeviceParticipant()
    token = mint_device_token(livekit_server.api_key, livekit_server.api_secret, room="call-y")
    try:
        async with asyncio.timeout(15):
            await device.connect(livekit_server.url, token)
            session = await demo_agent.next_session(timeout=10)
            await device.wait_until(lambda: device.agent_identity is not None)
        assert session.room_name == "call-y"
    finally:
        async with asyncio.timeout(10):
            await device.aclose()
    # The caller hanging up ends the agent's session too.
    async with asyncio.timeout(10):
        await session.ended.wait()
    assert session.error is None


@pytest.mark.e2e
async def test_command_line_agent_joins_and_stops_on_sigterm(
    livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(livekit_server.api_secret + "\n")
    env = {k: v for k, v in os.environ.items() if k != "LIVEKIT_API_SECRET"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "demo.agent",
        "--url",
        livekit_server.url,
        "--api-key",
        livekit_server.api_key,
        "--api-secret-file",
        str(secret_file),
        "--agent-name",
        AGENT_NAME,
        "--log-level",
        "debug",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    output: list[str] = []
    device = DeviceParticipant()
    try:
        async with asyncio.timeout(20):
            while not any("agent worker registered" in line for line in output):
                line = await proc.stdout.readline()
                assert line, "agent exited early:\n" + "".join(output)
                output.append(line.decode(errors="replace"))
            token = mint_device_token(
                livekit_server.api_key, livekit_server.api_secret, room="call-cli"
            )
            await device.connect(livekit_server.url, token)
            await device.wait_until(lambda: device.agent_identity is not None)
            await device.wait_until(lambda: "listening" in device.agent_states)
            proc.send_signal(signal.SIGTERM)
            await device.agent_left.wait()
            rest = await proc.stdout.read()
            output.append(rest.decode(errors="replace"))
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        async with asyncio.timeout(10):
            await device.aclose()
    assert livekit_server.api_secret not in "".join(output)
