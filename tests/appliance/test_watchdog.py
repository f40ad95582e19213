"""The systemd watchdog through a real notify socket: pings stop while the device hangs."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import alsaaudio
import httpx
import numpy as np
import pytest

from appliance.audio.alsa import alsa_pipeline
from appliance.audio.pipeline import AudioPipeline
from appliance.clock import ManualClock, SystemClock
from appliance.daemon import Daemon
from appliance.provisioning_client import Enrollment
from appliance.settings import (
    BackendSettings,
    BoardAudio,
    BoardProfile,
    CallSettings,
    DeviceSettings,
    Settings,
    WakeSettings,
)
from appliance.state import State, StateChange
from appliance.status.systemd import default_notify, watchdog_period_s
from appliance.status.watchdog import (
    Watchdog,
    thread_probe,
    transient_state_bounds,
    watch_device,
)
from tests.appliance.audio.alsa_devices import use_config, write_file_devices

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Short enough for a test, long enough for a loaded 2-core machine: pings every 0.5 s.
PERIOD_S = 1.0
INTERVAL_S = PERIOD_S / 2
# A resting speaker's thread moves once a second; the deadline leaves it a second of slack.
AUDIO_DEADLINE_S = 2.0
# How late a ping may be on a busy machine before a test calls it missing.
SLACK_S = 0.5


class NotifyReader:
    """The systemd end of $NOTIFY_SOCKET: reads on its own thread and stamps each arrival.

    A thread, so that arrivals are stamped even while the test's event loop is blocked.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.messages: list[tuple[float, str]] = []
        self._sock = sock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-reader", daemon=True)
        self._thread.start()

    def pings(self, after: float = 0.0) -> list[float]:
        """Arrival times (monotonic) of WATCHDOG=1 after `after`."""
        return [t for t, m in list(self.messages) if m == "WATCHDOG=1" and t > after]

    async def wait_for_pings(self, count: int, *, after: float = 0.0, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while len(self.pings(after)) < count:
                await asyncio.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyReader]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.05)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    reader = NotifyReader(sock)
    yield reader
    reader.close()
    sock.close()


def watchdog(clock: Any = None) -> Watchdog:
    return Watchdog(default_notify(), PERIOD_S, clock=clock or SystemClock())


async def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def assert_regular(pings: list[float]) -> None:
    """Consecutive pings half a period apart, give or take the machine's load."""
    gaps = np.diff(pings)
    assert gaps.min() > INTERVAL_S - 0.15, gaps
    assert gaps.max() < INTERVAL_S + SLACK_S, gaps


async def test_pings_come_every_half_period_while_every_probe_is_healthy(
    notify: NotifyReader,
) -> None:
    async with watchdog() as dog:
        dog.add_probe("always", lambda: None)
        await notify.wait_for_pings(5, timeout=5)
    pings = notify.pings()
    assert_regular(pings)
    assert dog.stats.pings == len(pings) and dog.stats.withheld == 0
    assert {m for _, m in notify.messages} == {"WATCHDOG=1"}


async def test_a_stalled_event_loop_stops_the_pings_for_the_stall(
    notify: NotifyReader, caplog: pytest.LogCaptureFixture
) -> None:
    stall_s = 1.6  # more than three ping intervals
    async with watchdog() as dog:
        await notify.wait_for_pings(2, timeout=5)
        asyncio.get_running_loop().call_soon(time.sleep, stall_s)
        stalled_at = time.monotonic()
        await asyncio.sleep(0)  # the blocking callback runs here
        resumed_at = time.monotonic()
        await notify.wait_for_pings(2, after=resumed_at, timeout=5)
    assert resumed_at - stalled_at >= stall_s - 0.05
    # A ping sent just before the stall may be read just after it began.
    assert notify.pings(after=stalled_at + 0.1) == notify.pings(after=resumed_at)
    assert dog.stats.late_ticks >= 1
    assert dog.stats.max_lateness_s >= stall_s - INTERVAL_S - 0.1
    assert re.search(r"the event loop was \d+\.\d\d s late", caplog.text)


class _Hangable:
    """A real libasound PCM whose `read` (capture) or `state` (a resting speaker's check)
    blocks while `running` is clear, as a hung USB device blocks the thread in the driver."""

    running = threading.Event()

    def __init__(self, pcm: Any, hangs: str) -> None:
        self._pcm = pcm
        self._hangs = hangs

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._pcm, name)
        if name != self._hangs:
            return attr

        def gated(*args: Any) -> Any:
            if not _Hangable.running.wait(timeout=30):
                raise alsaaudio.ALSAAudioError("the test never let the device go on")
            return attr(*args)

        return gated


async def file_pipeline(workdir: Path, hangs: str) -> AudioPipeline:
    """A started ALSA pipeline on file devices, idle as a daemon's, that can be made to hang."""
    devices = write_file_devices(workdir, np.zeros(30 * 48000, dtype=np.int16))
    use_config(devices.config)
    audio = BoardAudio(
        backend="alsa",
        pacing="clock",
        capture_device=devices.capture,
        playback_device=devices.playback,
        echo_cancellation="off",
        noise_suppression=False,
        high_pass_filter=False,
        auto_gain_control=False,
    )
    pipeline = alsa_pipeline(
        audio,
        clock=SystemClock(),
        pcm_factory=lambda **kw: _Hangable(alsaaudio.PCM(**kw), hangs),
    )
    pipeline.set_call_audio(False)
    await pipeline.start()
    assert pipeline.fault is None, pipeline.fault
    return pipeline


@pytest.mark.parametrize(
    ("hangs", "thread"), [("read", "alsa-capture"), ("state", "alsa-playback")]
)
async def test_a_stuck_audio_thread_stops_the_pings_until_it_moves_again(
    hangs: str,
    thread: str,
    notify: NotifyReader,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _Hangable.running.set()
    pipeline = await file_pipeline(tmp_path, hangs)
    try:
        async with watchdog() as dog:
            dog.add_probe("audio", thread_probe(pipeline, AUDIO_DEADLINE_S))
            # Healthy for longer than the deadline, with the speaker resting (nothing plays).
            started = time.monotonic()
            await notify.wait_for_pings(6, after=started, timeout=10)
            assert pipeline.session is not None
            assert time.monotonic() - started > AUDIO_DEADLINE_S
            hung_at = time.monotonic()
            _Hangable.running.clear()
            await wait_until(lambda: dog.stats.withheld > 0, AUDIO_DEADLINE_S + PERIOD_S + 5)
            withheld_at = time.monotonic()
            await asyncio.sleep(3 * INTERVAL_S)
            assert notify.pings(after=withheld_at) == [], "no ping while the thread is stuck"
            last = notify.pings(after=hung_at)
            assert not last or last[-1] - hung_at < AUDIO_DEADLINE_S + INTERVAL_S + SLACK_S
            _Hangable.running.set()
            moved_at = time.monotonic()
            await notify.wait_for_pings(2, after=moved_at, timeout=5)
        assert pipeline.fault is None, "a hang is not a device fault the pipeline could see"
    finally:
        _Hangable.running.set()
        await pipeline.aclose()
    assert f"audio unhealthy ({thread} still for" in caplog.text
    assert "audio healthy again" in caplog.text
    (other,) = {"alsa-capture", "alsa-playback"} - {thread}
    assert f"{other} still for" not in caplog.text


class StateSource:
    """What the watchdog sees of the supervisor: its state and its observers."""

    def __init__(self) -> None:
        self.state = State.READY
        self.muted = False
        self._observers: list[Callable[[StateChange], None]] = []

    def add_observer(self, observer: Callable[[StateChange], None]) -> None:
        self._observers.append(observer)

    def change(self, state: State, *, muted: bool | None = None) -> None:
        """As the supervisor's `_set_state`: a mute toggle is a change to the same state."""
        previous, self.state = self.state, state
        self.muted = self.muted if muted is None else muted
        for observer in self._observers:
            observer(StateChange(previous, state, muted=self.muted))


def settings_for(state_dir: Path, board: BoardProfile | None = None) -> Settings:
    return Settings(
        device=DeviceSettings(state_dir=state_dir),
        backend=BackendSettings(url="http://backend.invalid"),
        board=board or BoardProfile(name="simulated"),
        wake=WakeSettings(engine="off"),
    )


async def test_a_supervisor_stuck_in_connecting_past_its_bound_stops_the_pings(
    notify: NotifyReader, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path)
    bound = transient_state_bounds(settings)[State.CONNECTING]
    # The states' time is a manual clock (the bound is over a minute); the pings' is real.
    clock = ManualClock()
    supervisor = StateSource()
    async with watchdog() as dog:
        watch_device(dog, settings, supervisor=supervisor, audio=None, clock=clock)
        supervisor.change(State.CONNECTING)
        await clock.advance(bound - 10)
        supervisor.change(State.CONNECTING, muted=True)  # muting does not restart the count
        await clock.advance(9)
        await notify.wait_for_pings(2, after=time.monotonic(), timeout=5)
        await clock.advance(2)
        await wait_until(lambda: dog.stats.withheld > 0, PERIOD_S + 5)
        withheld_at = time.monotonic()
        await asyncio.sleep(3 * INTERVAL_S)
        assert notify.pings(after=withheld_at) == [], "no ping while stuck in connecting"
        supervisor.change(State.CALL_FAILED)  # the attempt ends at last: no bound there
        await notify.wait_for_pings(2, after=time.monotonic(), timeout=5)
        # A state the device lives in for hours is never "stuck".
        supervisor.change(State.READY)
        await clock.advance(24 * 3600)
        await notify.wait_for_pings(2, after=time.monotonic(), timeout=5)
    assert "supervisor unhealthy (connecting for 106.0 s, bound 105.0 s)" in caplog.text
    assert caplog.text.count("supervisor unhealthy") == 1, "logged once"
    assert "supervisor healthy again" in caplog.text


async def test_the_daemon_feeds_the_watchdog_systemd_asked_for(
    notify: NotifyReader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon on file-device ALSA: READY=1, then pings at half of WATCHDOG_USEC."""
    monkeypatch.setenv("WATCHDOG_USEC", str(int(PERIOD_S * 1_000_000)))
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    devices = write_file_devices(tmp_path / "alsa", np.zeros(30 * 48000, dtype=np.int16))
    use_config(devices.config)
    audio = BoardAudio(
        backend="alsa",
        pacing="clock",
        capture_device=devices.capture,
        playback_device=devices.playback,
        echo_cancellation="off",
    )
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    settings = settings_for(state_dir, BoardProfile(name="files", audio=audio))
    Enrollment("d-1", "device-d-1", settings.backend.url).save(state_dir)
    device = {"device_id": "d-1", "name": "kiosk", "status": "approved", "agent_name": "a"}
    grant = {
        "server_url": "ws://127.0.0.1:1",
        "token": "t",
        "room": "call-c-1",
        "identity": "device-d-1",
        "call_id": "c-1",
        "expires_at": "2099-01-01T00:00:00Z",
    }
    transport = httpx.MockTransport(
        lambda request: (
            httpx.Response(200, json=grant)
            if request.url.path == "/v1/grants"
            else httpx.Response(200, json=device)
        )
    )
    async with Daemon(settings, transport=transport) as daemon:
        stop = asyncio.Event()
        runner = asyncio.create_task(daemon.run(stop))
        try:
            await notify.wait_for_pings(4, timeout=10)
            assert daemon.supervisor.state is State.READY
        finally:
            stop.set()
            async with asyncio.timeout(15):
                await runner
    messages = [m for _, m in notify.messages]
    assert "READY=1\nSTATUS=ready" in messages
    assert_regular(notify.pings())


def test_the_period_is_systemds_when_it_is_meant_for_this_process() -> None:
    pid = os.getpid()
    assert watchdog_period_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid)}, pid) == 30
    assert watchdog_period_s({"WATCHDOG_USEC": "30000000"}, pid) == 30
    # Inherited by a child: not its watchdog.
    assert watchdog_period_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid) is None
    assert watchdog_period_s({}, pid) is None
    assert watchdog_period_s({"WATCHDOG_USEC": "0"}, pid) is None
    assert watchdog_period_s({"WATCHDOG_USEC": "soon"}, pid) is None


async def test_without_a_period_nothing_is_sent(notify: NotifyReader) -> None:
    async with Watchdog(default_notify(), None, clock=SystemClock()) as dog:
        await asyncio.sleep(0.3)
    assert not dog.enabled and notify.messages == []


def test_the_documented_bounds_are_the_ones_derived_from_the_default_settings(
    tmp_path: Path,
) -> None:
    bounds = transient_state_bounds(settings_for(tmp_path))
    assert bounds == {
        State.STARTING: 80.0,
        State.CONNECTING: 105.0,
        State.RINGING: 635.0,
        State.REJOINING: 100.0,
        State.ENDING: 40.0,
        State.STOPPING: 30.0,
    }
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for state, bound in bounds.items():
        assert re.search(rf"^- `{state.value}`: {bound:.0f} s[.,]", doc, re.M), state


def test_a_bound_follows_the_call_settings(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    longer = dataclasses.replace(
        settings,
        call=CallSettings(connect_timeout_s=20, agent_join_timeout_s=40),
        backend=BackendSettings(url="http://backend.invalid", timeout_s=10),
    )
    # Twice the token and the join (a refused token is replaced once), the agent, the margin.
    assert transient_state_bounds(longer)[State.CONNECTING] == 2 * (40 + 20 + 5) + 40 + 15
