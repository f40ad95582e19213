"""The local control socket behind `appliance press [--long]` and `appliance status`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)


class ControlServer:
    """Answers one-line commands on a unix socket owned by the daemon's user."""

    def __init__(
        self,
        path: Path,
        *,
        press: Callable[[], None],
        status: Callable[[], str],
        long_press: Callable[[], None] | None = None,
    ) -> None:
        self._path = path
        self._press = press
        self._long_press = long_press
        self._status = status
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Listen on the socket (mode 0600)."""
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self._path))
        self._path.chmod(0o600)

    async def aclose(self) -> None:
        """Stop listening and remove the socket."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await reader.readline()).decode(errors="replace").strip()
            if line == "press":
                self._press()
                answer = "ok"
            elif line == "press long" and self._long_press is not None:
                self._long_press()
                answer = "ok"
            elif line == "status":
                answer = self._status()
            else:
                answer = f"error unknown command {line!r}"
            writer.write(answer.encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def send_command(path: Path, command: str, *, timeout_s: float = 5.0) -> str:
    """Send one command to a running daemon and return its answer."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(command.encode() + b"\n")
        await writer.drain()
        answer = (await reader.readline()).decode().strip()
        writer.close()
        await writer.wait_closed()
    return answer
