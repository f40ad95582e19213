"""The local control socket behind `appliance press [--long]`, `appliance status` and
`appliance transcript [--follow]`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from appliance.aio import cancel_and_wait
from appliance.call.conversation import Conversation

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
        transcripts: Conversation | None = None,
    ) -> None:
        self._path = path
        self._transcripts = transcripts
        self._following: set[asyncio.Task[object]] = set()
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
        await cancel_and_wait(*self._following)
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
            elif line in ("transcript", "transcript follow") and self._transcripts is not None:
                await self._send_transcript(reader, writer, follow=line.endswith("follow"))
                return
            else:
                answer = f"error unknown command {line!r}"
            writer.write(answer.encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _send_transcript(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, follow: bool
    ) -> None:
        """The latest call's lines, then (following) each new one until the client leaves."""
        assert self._transcripts is not None
        transcripts = self._transcripts
        queue = transcripts.follow() if follow else None
        task = asyncio.current_task()
        assert task is not None
        self._following.add(task)
        gone = asyncio.ensure_future(reader.read(1))  # b"" when the client hangs up
        try:
            for line in transcripts.recent():
                writer.write(line.encode() + b"\n")
            await writer.drain()
            while queue is not None:
                line_task = asyncio.ensure_future(queue.get())
                await asyncio.wait({line_task, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not line_task.done():
                    await cancel_and_wait(line_task)
                    return
                writer.write(line_task.result().encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass  # the client went away while we wrote
        finally:
            if queue is not None:
                transcripts.unfollow(queue)
            await cancel_and_wait(gone)
            self._following.discard(task)


async def follow_lines(path: Path, command: str) -> AsyncIterator[str]:
    """Send a streaming command and yield each line the daemon sends until it closes."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(command.encode() + b"\n")
        await writer.drain()
        while line := await reader.readline():
            yield line.decode(errors="replace").rstrip("\n")
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
