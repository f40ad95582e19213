"""systemd's watchdog, fed only while the loop turns, audio flows and no state hangs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from appliance.aio import AsyncResource, TaskSet
from appliance.call.livekit_call import CONNECT_MARGIN_S, STATUS_DRAIN_S
from appliance.clock import Clock
from appliance.provisioning_client.client import MAX_RING_S
from appliance.settings import Settings
from appliance.state import State, StateChange
from appliance.status.systemd import Notify

logger = logging.getLogger(__name__)

Probe = Callable[[], str | None]
"""None while healthy, else what is wrong, with the figure."""

# httpx applies `backend.timeout_s` to each phase of a request (pool, connect, write, read).
REQUEST_PHASES = 4
# The supervisor bounds its report of a call's end to 3 s.
END_REPORT_S = 3.0
# For what only the SDK bounds (unpublishing, leaving a room, a failed join's clean-up) and
# the loop's scheduling on a busy board.
MARGIN_S = 15.0
# Start-up waits for the first check-in; systemd's start timeout (90 s) bounds it as well,
# and arms the watchdog only once READY=1 went out.
STARTING_MARGIN_S = 60.0
# As the unit's TimeoutStopSec=: after STOPPING only the exit stack runs, and systemd kills
# a stop that takes longer anyway.
STOPPING_S = 30.0
# The capture thread moves every 10 ms (a call) or 80 ms (an idle block), a resting speaker's
# thread every second (alsa.REST_CHECK_S): five seconds without a move is a hung device.
AUDIO_THREAD_DEADLINE_S = 5.0
# A watchdog tick this late means the loop was blocked; it is counted and logged.
LATE_FRACTION = 0.25


class Observable(Protocol):
    """The supervisor, as far as the watchdog watches it."""

    @property
    def state(self) -> State: ...

    def add_observer(self, observer: Callable[[StateChange], None]) -> None: ...


class AudioThreads(Protocol):
    """The audio pipeline, as far as the watchdog watches it."""

    def thread_progress(self) -> Mapping[str, float]: ...


@dataclass
class WatchdogStats:
    """What the watchdog did; read by tests and diagnostics."""

    pings: int = 0
    withheld: int = 0  # ticks without a ping because a probe failed
    late_ticks: int = 0
    max_lateness_s: float = 0.0


class Watchdog(AsyncResource):
    """Sends WATCHDOG=1 every half period while every probe is healthy.

    The ping comes from a task on the event loop, so a blocked loop stops it by itself;
    the probes cover what the loop cannot see (audio threads, a state that never ends).
    Without a notify socket or a period (not under systemd) it does nothing.
    """

    def __init__(self, notify: Notify | None, period_s: float | None, *, clock: Clock) -> None:
        self.stats = WatchdogStats()
        self._notify = notify
        self._period_s = period_s
        self._clock = clock
        self._probes: dict[str, Probe] = {}
        self._failing: dict[str, str] = {}
        self._tasks = TaskSet()

    @property
    def enabled(self) -> bool:
        """Whether systemd asked for a watchdog (and can be told)."""
        return self._notify is not None and self._period_s is not None

    def add_probe(self, name: str, probe: Probe) -> None:
        """Ping only while `probe()` returns None."""
        self._probes[name] = probe

    async def start(self) -> None:
        """Start pinging (when enabled)."""
        if self.enabled:
            logger.info("systemd watchdog: %.1f s, pinging every %.1f s", *self._timing())
            self._tasks.spawn(self._run(), "watchdog")

    async def aclose(self) -> None:
        """Stop pinging."""
        await self._tasks.aclose()

    def _timing(self) -> tuple[float, float]:
        assert self._period_s is not None
        return self._period_s, self._period_s / 2

    async def _run(self) -> None:
        _, interval = self._timing()
        while True:
            self._tick()
            due = self._clock.monotonic() + interval
            await self._clock.sleep(interval)
            self._count_lateness(self._clock.monotonic() - due, interval)

    def _tick(self) -> None:
        results = {name: _check(probe) for name, probe in self._probes.items()}
        failing = {name: detail for name, detail in results.items() if detail is not None}
        for name, detail in failing.items():
            if name not in self._failing:
                logger.error(
                    "watchdog: %s unhealthy (%s); no more pings, systemd will restart the unit",
                    name,
                    detail,
                    extra={"WATCHDOG_PROBE": name},
                )
        for name in self._failing.keys() - failing.keys():
            logger.warning(
                "watchdog: %s healthy again; pinging again", name, extra={"WATCHDOG_PROBE": name}
            )
        self._failing = failing
        if failing:
            self.stats.withheld += 1
            return
        assert self._notify is not None
        self._notify("WATCHDOG=1")
        self.stats.pings += 1

    def _count_lateness(self, late_s: float, interval: float) -> None:
        self.stats.max_lateness_s = max(self.stats.max_lateness_s, late_s)
        if late_s >= LATE_FRACTION * interval:
            self.stats.late_ticks += 1
            logger.warning(
                "watchdog: the event loop was %.2f s late (%d times so far)",
                late_s,
                self.stats.late_ticks,
                extra={"LOOP_LATE_MS": round(late_s * 1000)},
            )


def _check(probe: Probe) -> str | None:
    try:
        return probe()
    except Exception as exc:
        # A probe that cannot tell is not a healthy one.
        logger.exception("watchdog probe failed")
        return f"the probe failed: {exc!r}"


class StateProbe:
    """Observer and probe: fails once the device stays in a transient state past its bound."""

    def __init__(self, bounds: Mapping[State, float], *, state: State, clock: Clock) -> None:
        self._bounds = dict(bounds)
        self._clock = clock
        self._state = state
        self._since = clock.monotonic()

    def __call__(self, change: StateChange) -> None:
        # A mute toggled mid-state is a change with the same state: the clock keeps running.
        if change.state is not change.previous:
            self._state, self._since = change.state, self._clock.monotonic()

    def check(self) -> str | None:
        """None unless the current state has lasted longer than its bound."""
        bound = self._bounds.get(self._state)
        stayed = self._clock.monotonic() - self._since
        if bound is None or stayed <= bound:
            return None
        return f"{self._state.value} for {stayed:.1f} s, bound {bound:.1f} s"


def transient_state_bounds(settings: Settings) -> dict[State, float]:
    """How long the device may stay in each transient state (docs/architecture.md)."""
    request_s = REQUEST_PHASES * settings.backend.timeout_s
    call = settings.call
    join_s = call.connect_timeout_s + CONNECT_MARGIN_S
    return {
        State.STARTING: request_s + STARTING_MARGIN_S,
        # The token, joining (once more with a fresh token if LiveKit refused the first),
        # then the agent (or a failed join's end report) and leaving.
        State.CONNECTING: 2 * (request_s + join_s)
        + max(call.agent_join_timeout_s, END_REPORT_S)
        + MARGIN_S,
        # The longest ring the backend may set, then the agent it dispatches (the ring
        # began once connected: the join is in CONNECTING's bound).
        State.RINGING: MAX_RING_S + call.agent_join_timeout_s + MARGIN_S,
        # The SDK resuming, then rejoins until the window runs out; one more join may be
        # under way when it does, and once back the agent has its join time.
        State.REJOINING: call.rejoin_window_s
        + request_s
        + join_s
        + call.agent_join_timeout_s
        + MARGIN_S,
        # Status messages drained, the room left, the end queued (and after a closed room,
        # one check-in).
        State.ENDING: STATUS_DRAIN_S + END_REPORT_S + request_s + MARGIN_S,
        State.STOPPING: STOPPING_S,
    }


def thread_probe(
    threads: AudioThreads,
    deadline_s: float = AUDIO_THREAD_DEADLINE_S,
    *,
    monotonic: Callable[[], float] = time.monotonic,
) -> Probe:
    """Fails while a thread has not moved for `deadline_s` (the threads' own clock)."""

    def check() -> str | None:
        now = monotonic()
        stale = {name: now - at for name, at in threads.thread_progress().items()}
        late = [f"{name} still for {age:.1f} s" for name, age in stale.items() if age > deadline_s]
        return f"{', '.join(late)}, deadline {deadline_s:.1f} s" if late else None

    return check


def watch_device(
    watchdog: Watchdog,
    settings: Settings,
    *,
    supervisor: Observable,
    audio: AudioThreads | None,
    clock: Clock,
) -> None:
    """Probe the supervisor's transient states and, on ALSA boards, the audio threads."""
    states = StateProbe(transient_state_bounds(settings), state=supervisor.state, clock=clock)
    supervisor.add_observer(states)
    watchdog.add_probe("supervisor", states.check)
    if audio is not None:  # the simulated board's audio runs on the loop itself
        watchdog.add_probe("audio", thread_probe(audio))
