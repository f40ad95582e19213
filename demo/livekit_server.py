"""A real LiveKit server on loopback, with fresh keys and free ports, for tests and the demo."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from appliance.aio import AsyncResource, join_tasks
from appliance.status.redact import redact
from demo.errors import LiveKitServerError, LiveKitServerNotFoundError

logger = logging.getLogger(__name__)

LIVEKIT_SERVER_VERSION = "v1.13.5"
BINARY_ENV_VAR = "LIVEKIT_SERVER_BIN"
LOOPBACK = "127.0.0.1"
# How long closing waits for the last of the server's output to reach its log file.
LOG_DRAIN_S = 2.0


def cached_binary(environ: Mapping[str, str]) -> Path:
    """Where scripts/setup builds the server: $KIOSK_CACHE_DIR, else $XDG_CACHE_HOME's or
    ~/.cache's kiosk-voice (the same rule as scripts/setup)."""
    cache = environ.get("KIOSK_CACHE_DIR")
    if not cache:
        base = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME", "~")) / ".cache")
        cache = str(Path(base).expanduser() / "kiosk-voice")
    return Path(cache) / "livekit-server" / LIVEKIT_SERVER_VERSION / "server"


def find_livekit_server(
    binary: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """Return the server binary: `binary`, $LIVEKIT_SERVER_BIN, the venv's, or the cache's."""
    env = os.environ if environ is None else environ
    candidates: list[tuple[str, Path]] = []
    if binary is not None:
        candidates.append(("binary argument", Path(binary)))
    elif env.get(BINARY_ENV_VAR):
        candidates.append((f"${BINARY_ENV_VAR}", Path(env[BINARY_ENV_VAR])))
    else:
        candidates.append(("virtualenv", Path(sys.executable).parent / "livekit-server"))
        candidates.append(("build cache", cached_binary(env)))
    for _origin, path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    looked = ", ".join(f"{origin}: {path}" for origin, path in candidates)
    raise LiveKitServerNotFoundError(
        f"no executable LiveKit server found ({looked}); run scripts/setup to build "
        f"livekit-server {LIVEKIT_SERVER_VERSION}, or set ${BINARY_ENV_VAR}"
    )


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """Return a port on loopback that is free right now for `kind` (TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _distinct_free_ports(count: int) -> list[int]:
    """Return `count` distinct ports free for both TCP and UDP on loopback."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(socket.SOCK_STREAM)
        if port in ports:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind((LOOPBACK, port))
        except OSError:
            continue
        ports.append(port)
    return ports


def build_config(
    *,
    port: int,
    rtc_udp_port: int,
    api_key: str,
    api_secret: str,
    webhook_urls: list[str] | None = None,
    redis_address: str | None = None,
    log_level: str = "info",
) -> dict[str, Any]:
    """Build a loopback-only server config (keys as in livekit's config.go); Redis: one node."""
    config: dict[str, Any] = {
        "port": port,
        "bind_addresses": [LOOPBACK],
        "rtc": {
            # No ICE/TCP fallback: its listener cannot be bound to loopback only.
            "tcp_port": 0,
            "udp_port": rtc_udp_port,
            "node_ip": LOOPBACK,
            "use_external_ip": False,
            # Without these the UDP mux binds the machine's other interfaces, not loopback.
            "enable_loopback_candidate": True,
            "interfaces": {"includes": ["lo"]},
            "ips": {"includes": [f"{LOOPBACK}/8"]},
        },
        "keys": {api_key: api_secret},
        "logging": {"level": log_level, "pion_level": "error"},
    }
    if webhook_urls:
        config["webhook"] = {"api_key": api_key, "urls": list(webhook_urls)}
    if redis_address:
        # Nodes on one Redis share rooms, routing and agent workers; they need the same keys.
        # Nothing else is required: node IDs are random, the default selector ("any") needs
        # no region, and every node advertises its own rtc.node_ip and ports.
        config["redis"] = {"address": redis_address}
    return config


class LiveKitServer(AsyncResource):
    """A LiveKit server subprocess bound to loopback; use as `async with LiveKitServer() as lk:`.

    Nodes of one cluster get the same `api_key`/`api_secret` and `redis_address` (host:port).
    """

    def __init__(
        self,
        *,
        binary: str | os.PathLike[str] | None = None,
        webhook_urls: list[str] | None = None,
        api_key: str | None = None,
        api_secret: str | None = None,
        redis_address: str | None = None,
        startup_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        log_level: str = "info",
        keep_log: bool = False,
    ) -> None:
        self._binary_arg = binary
        self._keep_log = keep_log
        self._webhook_urls = list(webhook_urls or [])
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._log_level = log_level
        if (api_key is None) != (api_secret is None):
            raise ValueError("api_key and api_secret go together")
        self.api_key = api_key or "API" + secrets.token_hex(6)
        self.api_secret = api_secret or secrets.token_urlsafe(36)
        self.redis_address = redis_address
        self.node_id = ""  # known once started; Redis maps rooms to it
        self.port = 0
        self.rtc_udp_port = 0
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._log_task: asyncio.Task[None] | None = None
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        """The signalling URL clients connect to."""
        return f"ws://{LOOPBACK}:{self.port}"

    @property
    def http_url(self) -> str:
        """The HTTP URL of the server API (Twirp) and health check."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def returncode(self) -> int | None:
        """The exit status if the server has exited, else None."""
        return None if self._proc is None else self._proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        """Return the last `lines` lines of the server log."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    async def start(self) -> None:
        """Start the server and wait until its HTTP port answers."""
        if self._proc is not None:
            raise LiveKitServerError("LiveKit server already started")
        binary = find_livekit_server(self._binary_arg)
        if self._tmpdir is None:
            self.port, self.rtc_udp_port = _distinct_free_ports(2)
            self._tmpdir = tempfile.TemporaryDirectory(prefix="livekit-server-")
        # else: a restart after kill(), on the same ports, keys and log.
        workdir = Path(self._tmpdir.name)
        config = build_config(
            port=self.port,
            rtc_udp_port=self.rtc_udp_port,
            api_key=self.api_key,
            api_secret=self.api_secret,
            webhook_urls=self._webhook_urls,
            redis_address=self.redis_address,
            log_level=self._log_level,
        )
        config_path = workdir / "livekit.yaml"
        # JSON is valid YAML, and needs no YAML library here.
        config_path.write_text(json.dumps(config, indent=2))
        config_path.chmod(0o600)
        self.log_path = workdir / "livekit-server.log"
        # The server logs every token it refuses ("invalid token: <jwt>"), and a refused
        # token may still be valid later (not yet valid, or refused for the wrong room):
        # its output goes through the same redaction as ours on the way to the file.
        self._proc = await asyncio.create_subprocess_exec(
            str(binary),
            "--config",
            str(config_path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            limit=1 << 20,
        )
        assert self._proc.stdout is not None
        self._log_task = asyncio.create_task(
            _copy_redacted(self._proc.stdout, self.log_path), name="livekit-server-log"
        )
        logger.info(
            "LiveKit server starting",
            extra={"pid": self._proc.pid, "port": self.port, "binary": str(binary)},
        )
        try:
            await self._wait_ready()
        except BaseException:
            await self.aclose()
            raise

    async def _wait_ready(self) -> None:
        assert self._proc is not None
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            try:
                async with asyncio.timeout(self._startup_timeout):
                    while True:
                        if self._proc.returncode is not None:
                            # The exit can be seen before the log copy has read the last
                            # lines, and those lines say why.
                            await self._drain_log()
                            raise LiveKitServerError(
                                f"LiveKit server exited with status {self._proc.returncode} "
                                f"during start-up; log tail:\n{self.log_tail()}"
                            )
                        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                            async with http.get(self.http_url + "/") as resp:
                                if resp.status == 200 and (await resp.text()).strip() == "OK":
                                    self.node_id = await self._wait_node_id()
                                    return
                        await asyncio.sleep(0.1)
            except TimeoutError as exc:
                raise LiveKitServerError(
                    f"LiveKit server did not answer on {self.http_url} within "
                    f"{self._startup_timeout:.0f} s; log tail:\n{self.log_tail()}"
                ) from exc

    async def _wait_node_id(self) -> str:
        """The node ID, once the log copy has written the start-up line, or ""."""
        for _ in range(40):
            if node_id := self._logged_node_id():
                return node_id
            await asyncio.sleep(0.05)
        logger.warning("LiveKit server logged no node ID", extra={"port": self.port})
        return ""

    def _logged_node_id(self) -> str:
        """The node ID from the start-up line (random per start, no config sets it), or ""."""
        assert self.log_path is not None
        for line in self.log_path.read_text(errors="replace").splitlines():
            # Console format: time, level, logger, caller, message, then the fields as JSON.
            fields = line.split("\t")
            if len(fields) >= 6 and fields[4] == "starting LiveKit server":
                with contextlib.suppress(ValueError):
                    fields_json = json.loads(fields[5])
                    if isinstance(fields_json, dict) and isinstance(fields_json.get("nodeID"), str):
                        return str(fields_json["nodeID"])
        return ""

    async def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash or a power cut would; every room
        and connection is lost. `restart()` brings it back on the same ports and keys."""
        proc, self._proc = self._proc, None
        if proc is None:
            raise LiveKitServerError("LiveKit server is not running")
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        await self._drain_log()

    def stall(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing answers."""
        if self._proc is None:
            raise LiveKitServerError("LiveKit server is not running")
        self._proc.send_signal(signal.SIGSTOP)

    def unstall(self) -> None:
        """Let a stalled server run again (SIGCONT)."""
        if self._proc is None:
            raise LiveKitServerError("LiveKit server is not running")
        self._proc.send_signal(signal.SIGCONT)

    async def restart(self) -> None:
        """Start the server again after `kill()`: same ports, keys and log file."""
        if self._tmpdir is None:
            raise LiveKitServerError("LiveKit server was never started")
        await self.start()

    async def _drain_log(self) -> None:
        log_task, self._log_task = self._log_task, None
        if log_task is not None:
            # Ends at the end of the output; a grandchild holding the pipe could keep it open.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LOG_DRAIN_S):
                    await join_tasks(log_task)

    async def aclose(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its temp dir."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a stalled server could not stop
            # The first SIGTERM starts a graceful drain that lingers for seconds even with
            # no rooms; a second one makes the server stop at once ("force": true).
            for grace in (0.5, self._stop_timeout):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        await proc.wait()
                if proc.returncode is not None:
                    break
            if proc.returncode is None:
                logger.warning("LiveKit server ignored SIGTERM; killing it")
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        elif proc is not None:
            await proc.wait()
        await self._drain_log()
        if self._tmpdir is not None:
            tmpdir, self._tmpdir = self._tmpdir, None
            if self._keep_log and self.log_path is not None and self.log_path.exists():
                kept = Path(tempfile.gettempdir()) / f"livekit-server-{self.port}.log"
                shutil.copyfile(self.log_path, kept)
                self.log_path = kept
            else:
                self.log_path = None
            tmpdir.cleanup()


async def _copy_redacted(output: asyncio.StreamReader, path: Path) -> None:
    """Write `output` to `path` line by line, flushed, with secrets masked."""
    with path.open("a", encoding="utf-8") as log_file:
        while True:
            try:
                line = await output.readline()
            except ValueError:  # a line longer than the stream's limit: take what there is
                line = await output.read(1 << 20)
            if not line:
                return
            log_file.write(redact(line.decode(errors="replace")))
            log_file.flush()
