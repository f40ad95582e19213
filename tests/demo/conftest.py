"""Fixtures for the demo stack: a real LiveKit server on loopback and the demo agent on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from demo.agent import DemoAgent
from demo.livekit_server import LiveKitServer

AGENT_NAME = "demo-agent"


# Self-contained so it can move to tests/conftest.py when other suites need a server.
@pytest_asyncio.fixture
async def livekit_server() -> AsyncIterator[LiveKitServer]:
    """A fresh LiveKit server: free ports, generated keys, loopback only."""
    async with LiveKitServer() as server:
        yield server


@pytest_asyncio.fixture
async def demo_agent(livekit_server: LiveKitServer) -> AsyncIterator[DemoAgent]:
    """The demo agent, registered on `livekit_server` as `demo-agent`."""
    async with DemoAgent(
        url=livekit_server.url,
        api_key=livekit_server.api_key,
        api_secret=livekit_server.api_secret,
        agent_name=AGENT_NAME,
        max_session_s=120.0,
    ) as agent:
        yield agent
