"""What the call-lifecycle benchmark puts around a real device: a slow or refusing backend
seam, a tap on the speaker, state changes with times, and the process's own resources."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from appliance.audio.base import Speaker
from appliance.call.worker_call import AUDIBLE_RMS
from appliance.state import State, StateChange
from demo.stack import AGENT_NAME, LocalStack
from tests.e2e.conftest import RunningDevice, run_device

# demo/ is not installed (not in the wheel): `python -m demo.agent` runs from the checkout.
REPO = Path(__file__).resolve().parents[2]


class BackendSeam(httpx.AsyncBaseTransport):
    """The real backend, reached `delay_s` later than it would be (each request sleeps
    first, as a far-away backend would make it), with 429s injected on demand."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.requests: list[tuple[float, str]] = []  # (time.monotonic(), path) as sent
        self.refused: list[str] = []
        self._inner = httpx.AsyncHTTPTransport()
        self._refuse: dict[str, int] = {}

    def refuse_next(self, path: str, count: int = 1) -> None:
        """Answer the next `count` requests to `path` with 429 and Retry-After: 1."""
        self._refuse[path] = self._refuse.get(path, 0) + count

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        path = request.url.path
        self.requests.append((time.monotonic(), path))
        if self._refuse.get(path, 0) > 0:
            self._refuse[path] -= 1
            self.refused.append(path)
            return httpx.Response(
                429,
                json={"error": "rate_limited", "message": "injected by the benchmark"},
                headers={"Retry-After": "1"},
            )
        return await self._inner.handle_async_request(request)

    def first_after(self, suffix: str, after: float) -> float | None:
        """When the first request to a path ending in `suffix` was sent after `after`."""
        return next((t for t, p in self.requests if t >= after and p.endswith(suffix)), None)

    async def aclose(self) -> None:
        await self._inner.aclose()


class SpeakerTap:
    """Passes every frame on to the board's speaker, noting when agent audio arrived."""

    def __init__(self, inner: Speaker) -> None:
        self._inner = inner
        self.frames = 0
        self.audible_frames = 0
        self.first_frame_at: float | None = None
        self.first_audible_at: float | None = None
        self._audible = asyncio.Event()

    def arm(self) -> None:
        """Forget what came before: the next frame and audible frame are noted afresh."""
        self.first_frame_at = self.first_audible_at = None
        self._audible.clear()

    async def write(self, frame: np.ndarray) -> None:
        now = time.monotonic()
        self.frames += 1
        if self.first_frame_at is None:
            self.first_frame_at = now
        if self.first_audible_at is None and _rms(frame) > AUDIBLE_RMS:
            self.audible_frames += 1
            self.first_audible_at = now
            self._audible.set()
        await self._inner.write(frame)

    async def wait_audible(self, timeout: float) -> float:
        """When the first audible frame since `arm()` was played."""
        async with asyncio.timeout(timeout):
            await self._audible.wait()
        assert self.first_audible_at is not None
        return self.first_audible_at

    async def aclose(self) -> None:
        return None  # the board closes the speaker it opened


@dataclass(frozen=True)
class Stamped:
    at: float  # time.monotonic()
    change: StateChange


class StateLog:
    """The daemon's state changes with their times; waits look only past a mark."""

    def __init__(self) -> None:
        self.changes: list[Stamped] = []
        self._changed = asyncio.Event()

    def __call__(self, change: StateChange) -> None:
        self.changes.append(Stamped(time.monotonic(), change))
        self._changed.set()

    def mark(self) -> int:
        return len(self.changes)

    def since(self, mark: int) -> list[Stamped]:
        return self.changes[mark:]

    def states_since(self, mark: int) -> list[State]:
        return [s.change.state for s in self.changes[mark:]]

    async def wait_for(self, state: State, mark: int, timeout: float) -> Stamped:
        """The first change to `state` at or after `mark`."""
        async with asyncio.timeout(timeout):
            while True:
                for stamped in self.changes[mark:]:
                    if stamped.change.state is state:
                        return stamped
                self._changed.clear()
                await self._changed.wait()

    async def wait_settled(self, mark: int, timeout: float) -> State:
        """The idle state the device ends up in after `mark` (READY or a fault)."""
        idle = {State.READY} | {s for s in State if s.is_fault and s is not State.CALL_FAILED}
        async with asyncio.timeout(timeout):
            while True:
                tail = self.changes[mark:]
                if tail and tail[-1].change.state in idle:
                    return tail[-1].change.state
                self._changed.clear()
                await self._changed.wait()

    def trim(self, keep: int = 50) -> None:
        """Drop old changes (a soak keeps only what it still looks at)."""
        del self.changes[:-keep]


@dataclass
class Device:
    """A running daemon with its backend seam, speaker tap and state log."""

    running: RunningDevice
    seam: BackendSeam
    tap: SpeakerTap
    log: StateLog

    @property
    def state(self) -> State:
        return self.running.daemon.supervisor.state

    def press(self) -> float:
        """Press the button; returns when (time.monotonic())."""
        at = time.monotonic()
        self.running.daemon.press()
        return at

    async def held_grant_ready(self, grants_before: int, timeout: float) -> None:
        """Wait until the keeper has fetched a grant since the count was `grants_before`."""
        keeper = self.running.daemon.supervisor.keeper
        async with asyncio.timeout(timeout):
            while keeper.grants_fetched <= grants_before:
                await asyncio.sleep(0.02)

    async def outbox_drained(self, timeout: float) -> None:
        outbox = self.running.daemon._outbox
        assert outbox is not None
        async with asyncio.timeout(timeout):
            await outbox.drained()


@asynccontextmanager
async def device(
    stack: LocalStack,
    name: str,
    *,
    delay_s: float = 0.0,
    hold_grant: bool = True,
    call: dict[str, float] | None = None,
) -> AsyncIterator[Device]:
    """A simulated device (silent microphone, no wake word) enrolled and running, READY."""
    silence = np.zeros(48000, dtype=np.int16)
    files = stack.write_device(name, silence, hold_grant=hold_grant, **(call or {}))
    # The benchmark presses a button; the wake word would only compete for the CPU.
    with files.config.open("a") as config:
        config.write('\n[wake]\nengine = "off"\n')
    settings = await asyncio.wait_for(stack.enroll(files), 10)
    seam = BackendSeam(delay_s)
    log = StateLog()
    async with run_device(settings, transport=seam) as running:
        running.daemon.supervisor.add_observer(log)
        # Every call made from now on plays through the tap (behind the fleet's volume).
        tap = SpeakerTap(running.daemon.speaker.speaker)
        running.daemon.speaker.speaker = tap
        await running.watcher.wait_for(State.READY, 15)
        yield Device(running, seam, tap, log)


def drain_agent_sessions(stack: LocalStack) -> None:
    """Forget the agent's finished sessions (each keeps the audio it received)."""
    agent = stack.agent
    agent.sessions[:] = [s for s in agent.sessions if not s.ended.is_set()]
    queue = agent._new_sessions
    while not queue.empty():
        queue.get_nowait()


@asynccontextmanager
async def agent_process(stack: LocalStack, greeting: str) -> AsyncIterator[Path]:
    """The demo agent in a process of its own (`python -m demo.agent`) instead of the stack's
    in-process one, so that this process holds the device and the backend only. Yields its
    log file."""
    await stack.agent.aclose()  # no more jobs for the in-process worker (closed again later)
    log = stack.workdir / "agent.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "demo.agent",
            "--url",
            stack.agent_livekit.url,
            "--api-key",
            stack.livekit.api_key,
            "--agent-name",
            AGENT_NAME,
            "--greeting",
            greeting,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "LIVEKIT_API_SECRET": stack.livekit.api_secret},
        )
    try:
        async with asyncio.timeout(30):
            while b"agent worker registered" not in log.read_bytes():
                if proc.returncode is not None:
                    raise RuntimeError(f"the agent exited: {log.read_text()[-2000:]}")
                await asyncio.sleep(0.1)
        yield log
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(15):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


class BackendProcess:
    """The stack's backend in a process of its own (`provisioning serve`), on the port and
    database of the stack's in-process one, which is stopped meanwhile: the soak's process
    then holds the device alone. `stop`/`start` are the soak's backend outage."""

    def __init__(self, stack: LocalStack) -> None:
        self._stack = stack
        self._proc: asyncio.subprocess.Process | None = None
        port = stack.backend.port
        self.url = stack.backend.url
        self.config = stack.workdir / "provisioning-process.toml"
        text = stack.backend_config.read_text()
        self.config.write_text(text.replace("port = 0", f"port = {port}", 1))
        self.log = stack.workdir / "backend.log"

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self._proc = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "provisioning"),
                "--config",
                str(self.config),
                "serve",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        async with asyncio.timeout(30), httpx.AsyncClient() as client:
            while True:
                if self._proc.returncode is not None:
                    raise RuntimeError(f"the backend exited: {self.log.read_text()[-2000:]}")
                try:
                    await client.get(f"{self.url}/", timeout=1)
                    return
                except httpx.TransportError:
                    await asyncio.sleep(0.1)

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            async with asyncio.timeout(15):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


@asynccontextmanager
async def backend_process(stack: LocalStack) -> AsyncIterator[BackendProcess]:
    """The backend out of this process while the block runs; in it again afterwards (for
    the records, and the stack's own shutdown)."""
    backend = BackendProcess(stack)
    await stack.backend.aclose()
    try:
        await backend.start()
        yield backend
    finally:
        await backend.stop()
        await stack.backend.start()


class LogTimes(logging.Handler):
    """When the device logged what: (time.monotonic(), message) of chosen messages."""

    def __init__(self, *needles: str) -> None:
        super().__init__(logging.INFO)
        self.needles = needles
        self.seen: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(n in message for n in self.needles):
            self.seen.append((time.monotonic(), message))

    def first_after(self, needle: str, after: float) -> float | None:
        return next((t for t, m in self.seen if needle in m and t >= after), None)


@contextlib.contextmanager
def log_times(logger_name: str, *needles: str) -> Iterator[LogTimes]:
    """Note the times of some INFO messages of `logger_name` while the block runs."""
    logger = logging.getLogger(logger_name)
    handler = LogTimes(*needles)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _socket_table() -> dict[str, str]:
    """Socket inode → "udp:53" / "tcp:ESTABLISHED" / "unix" … for this process's sockets."""
    states = {"01": "established", "0A": "listen", "06": "time_wait", "08": "close_wait"}
    kinds: dict[str, str] = {}
    for table in ("tcp", "tcp6", "udp", "udp6", "unix"):
        with contextlib.suppress(OSError), open(f"/proc/net/{table}") as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if table == "unix":
                    kinds[fields[6]] = "unix"
                elif table.startswith("udp"):
                    port = int(fields[2].rsplit(":", 1)[1], 16)
                    kinds[fields[9]] = "udp:dns" if port == 53 else "udp"
                else:
                    kinds[fields[9]] = f"tcp:{states.get(fields[3], fields[3])}"
    return kinds


def fd_kinds() -> dict[str, int]:
    """This process's open descriptors by kind: file, pipe, tcp:established, udp:dns, …"""
    table = _socket_table()
    counts: dict[str, int] = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            kind = table.get(target[8:-1], "socket")
        elif target.startswith("/"):
            kind = "file"
        else:
            kind = target.split(":", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def resolver_sockets() -> int:
    """This process's UDP sockets talking to port 53 (DNS lookups under way)."""
    return fd_kinds().get("udp:dns", 0)


async def quiet_fds(timeout: float) -> tuple[int, float]:
    """Open descriptors once no DNS lookup is under way (libwebrtc resolves the STUN servers
    LiveKit names on a thread per lookup; this sandbox's resolver leaves some unanswered
    for seconds); returns (count, seconds waited)."""
    started = time.monotonic()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while resolver_sockets():
                await asyncio.sleep(0.5)
    return open_fds(), time.monotonic() - started


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def live_objects(*names: str) -> dict[str, int]:
    """How many objects of these class names the garbage collector tracks."""
    gc.collect()
    counts = dict.fromkeys(names, 0)
    for obj in gc.get_objects():
        name = type(obj).__name__
        if name in counts:
            counts[name] += 1
    return counts


def rss_kb(pid: int | str = "self") -> int:
    """A process's resident memory (VmRSS); this one's after a full collection."""
    if pid == "self":
        gc.collect()
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def call_worker_pids() -> list[int]:
    """This process's children that are call workers (`python -m appliance.call.worker`),
    found in /proc rather than asked of the daemon."""
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = stat.read().rsplit(")", 1)[1].split()[1]
            if parent != me:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if b"appliance.call.worker" in cmdline.read():
                    found.append(int(entry))
        except OSError:
            continue  # it exited meanwhile
    return sorted(found)


@dataclass(frozen=True)
class DeviceFootprint:
    """The device's resources: this process (daemon, and the test's own share) and its
    call workers, at one moment."""

    daemon_rss_kb: int
    worker_rss_kb: int
    daemon_fds: int
    worker_fds: int
    workers: int

    @property
    def rss_kb(self) -> int:
        return self.daemon_rss_kb + self.worker_rss_kb

    @property
    def fds(self) -> int:
        return self.daemon_fds + self.worker_fds

    def describe(self) -> str:
        return (
            f"RSS {self.rss_kb / 1024:.1f} MB (daemon {self.daemon_rss_kb / 1024:.1f} + "
            f"{self.workers} call worker(s) {self.worker_rss_kb / 1024:.1f}), "
            f"{self.fds} fds ({self.daemon_fds} + {self.worker_fds})"
        )


def footprint() -> DeviceFootprint:
    pids = call_worker_pids()
    worker_rss = worker_fds = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            worker_rss += rss_kb(pid)
            worker_fds += open_fds(pid)
    return DeviceFootprint(rss_kb(), worker_rss, open_fds(), worker_fds, len(pids))


async def spare_worker_ready(dev: Device, timeout: float) -> None:
    """Wait until the daemon's waiting call worker has started (and no call's is left), so
    that a quiet point always counts the same processes."""
    workers = dev.running.daemon._call_workers
    assert workers is not None
    async with asyncio.timeout(timeout):
        while len(workers.pids) != 1 or len(call_worker_pids()) != 1:
            await asyncio.sleep(0.05)


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile, interpolated linearly between ranks (numpy's default)."""
    return float(np.percentile(np.asarray(values, dtype=float), p))


def _rms(frame: np.ndarray) -> float:
    return float(np.sqrt(np.mean(frame.astype(np.float32) ** 2))) if frame.size else 0.0
