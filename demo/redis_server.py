"""A throwaway Redis on loopback, no persistence, in its own temp dir: what LiveKit nodes share."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
from pathlib import Path

from appliance.aio import AsyncResource
from demo.errors import DemoError
from demo.livekit_server import LOOPBACK, free_port

logger = logging.getLogger(__name__)

PACKAGE = "redis-server"
REDIS_SERVER_BINARY = Path("/usr/bin/redis-server")
# redis-server exits with this in its log when another process took the port first.
_PORT_TAKEN = "Address already in use"

RespValue = str | int | bytes | list["RespValue"] | None


class RedisServerNotFoundError(DemoError, FileNotFoundError):
    """The redis-server binary is not on this machine."""


class RedisServerError(DemoError, RuntimeError):
    """Redis failed to start, died, or answered a command with an error."""


def find_redis_server(binary: str | os.PathLike[str] | None = None) -> Path:
    """Return the redis-server binary: `binary`, else Debian's."""
    path = REDIS_SERVER_BINARY if binary is None else Path(binary)
    if path.is_file() and os.access(path, os.X_OK):
        return path
    raise RedisServerNotFoundError(
        f"no executable redis-server at {path}; install Debian's `{PACKAGE}` package "
        f"(scripts/setup does)"
    )


def encode_command(*args: str | bytes) -> bytes:
    """Encode a command as a RESP array of bulk strings."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


async def read_reply(reader: asyncio.StreamReader) -> RespValue:
    """Read one RESP2 reply; an error reply raises `RedisServerError`."""
    line = (await reader.readuntil(b"\r\n"))[:-2]
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisServerError(f"Redis answered with an error: {rest.decode(errors='replace')}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        return (await reader.readexactly(size + 2))[:-2]
    if kind == b"*":
        count = int(rest)
        if count < 0:
            return None
        return [await read_reply(reader) for _ in range(count)]
    raise RedisServerError(f"unexpected RESP reply: {line[:40]!r}")


class RedisServer(AsyncResource):
    """Debian's redis-server on 127.0.0.1 and a free port; `async with RedisServer() as redis:`."""

    def __init__(
        self,
        *,
        binary: str | os.PathLike[str] | None = None,
        startup_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        command_timeout: float = 5.0,
        port_attempts: int = 3,
    ) -> None:
        self._binary_arg = binary
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._command_timeout = command_timeout
        self._port_attempts = port_attempts
        self.port = 0
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self.log_path: Path | None = None

    @property
    def address(self) -> str:
        """host:port, as LiveKit's `redis.address` takes it."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def returncode(self) -> int | None:
        """The exit status if the server has exited, else None."""
        return None if self._proc is None else self._proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        """Return the last `lines` lines of the server log."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def start(self) -> None:
        """Start redis-server and wait until it answers PING."""
        if self._proc is not None:
            raise RedisServerError("Redis already started")
        binary = find_redis_server(self._binary_arg)
        self._tmpdir = tempfile.TemporaryDirectory(prefix="redis-server-")
        workdir = Path(self._tmpdir.name)
        self.log_path = workdir / "redis-server.log"
        try:
            for attempt in range(1, self._port_attempts + 1):
                self.port = free_port()
                await self._spawn(binary, workdir, self.log_path)
                try:
                    await self._wait_ready()
                    return
                except RedisServerError:
                    await self._stop_process()
                    if attempt == self._port_attempts or _PORT_TAKEN not in self.log_tail():
                        raise
                    logger.info("Redis port was taken; trying another", extra={"port": self.port})
        except BaseException:
            await self.aclose()
            raise

    async def _spawn(self, binary: Path, workdir: Path, log_path: Path) -> None:
        with log_path.open("wb") as log_file:
            self._proc = await asyncio.create_subprocess_exec(
                str(binary),
                "--bind",
                LOOPBACK,
                "--port",
                str(self.port),
                "--protected-mode",
                "yes",
                # No RDB snapshots and no append-only file: nothing outlives the process.
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--daemonize",
                "no",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        extra = {"pid": self._proc.pid, "port": self.port, "binary": str(binary)}
        logger.info("Redis starting", extra=extra)

    async def _wait_ready(self) -> None:
        assert self._proc is not None
        try:
            async with asyncio.timeout(self._startup_timeout):
                while True:
                    if self._proc.returncode is not None:
                        raise RedisServerError(
                            f"redis-server exited with status {self._proc.returncode} during "
                            f"start-up; log tail:\n{self.log_tail()}"
                        )
                    # Refused until it listens; "-LOADING" errors are possible in between.
                    with contextlib.suppress(OSError, EOFError, TimeoutError, RedisServerError):
                        if await self.command("PING") == "PONG":
                            return
                    await asyncio.sleep(0.05)
        except TimeoutError as exc:
            raise RedisServerError(
                f"redis-server did not answer PING on {self.address} within "
                f"{self._startup_timeout:.0f} s; log tail:\n{self.log_tail()}"
            ) from exc

    async def command(self, *args: str | bytes) -> RespValue:
        """Send one command on a fresh connection and return its reply."""
        async with asyncio.timeout(self._command_timeout):
            reader, writer = await asyncio.open_connection(LOOPBACK, self.port)
            try:
                writer.write(encode_command(*args))
                await writer.drain()
                return await read_reply(reader)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._stop_timeout):
                    await proc.wait()
            if proc.returncode is None:
                logger.warning("Redis ignored SIGTERM; killing it", extra={"pid": proc.pid})
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        await proc.wait()

    async def aclose(self) -> None:
        """Stop redis-server (SIGTERM, then SIGKILL) and remove its temp dir."""
        await self._stop_process()
        if self._tmpdir is not None:
            tmpdir, self._tmpdir = self._tmpdir, None
            self.log_path = None
            tmpdir.cleanup()
