"""The LiveKit server launcher: where it finds the binary, and how it fails."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from demo.errors import LiveKitServerError, LiveKitServerNotFoundError
from demo.livekit_server import (
    LIVEKIT_SERVER_VERSION,
    LiveKitServer,
    cached_binary,
    find_livekit_server,
)


@pytest.mark.unit
def test_missing_binary_error_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(LiveKitServerNotFoundError, match="scripts/setup"):
        find_livekit_server(tmp_path / "nope")


@pytest.mark.unit
def test_env_var_names_the_binary(tmp_path: Path) -> None:
    binary = tmp_path / "server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert find_livekit_server(environ={"LIVEKIT_SERVER_BIN": str(binary)}) == binary


@pytest.mark.integration
async def test_a_server_that_dies_at_start_up_is_reported_with_its_log(tmp_path: Path) -> None:
    binary = tmp_path / "server"
    binary.write_text("#!/bin/sh\necho 'config: boom' >&2\nexit 3\n")
    binary.chmod(0o755)
    server = LiveKitServer(binary=binary, startup_timeout=10)
    async with asyncio.timeout(15):
        with pytest.raises(LiveKitServerError, match=r"(?s)status 3.*config: boom"):
            await server.start()
    assert server.returncode is None  # reaped and forgotten


@pytest.mark.e2e
async def test_server_answers_on_loopback_and_stops(livekit_server: LiveKitServer) -> None:
    assert livekit_server.url.startswith("ws://127.0.0.1:")
    assert len(livekit_server.api_secret) >= 32
    async with asyncio.timeout(10), aiohttp.ClientSession() as http:
        async with http.get(livekit_server.http_url) as resp:
            assert (await resp.text()).strip() == "OK"
        async with asyncio.timeout(8):
            await livekit_server.aclose()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(livekit_server.http_url):
                pass


def test_the_build_cache_follows_the_same_rule_as_setup() -> None:
    tail = Path("livekit-server") / LIVEKIT_SERVER_VERSION / "server"
    assert cached_binary({"KIOSK_CACHE_DIR": "/c", "XDG_CACHE_HOME": "/x"}) == Path("/c") / tail
    assert cached_binary({"XDG_CACHE_HOME": "/x", "HOME": "/h"}) == Path("/x/kiosk-voice") / tail
    assert cached_binary({"HOME": "/h"}) == Path("/h/.cache/kiosk-voice") / tail
