"""The status LED: one table of patterns per state, played on the injected clock."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from appliance.aio import AsyncResource, TaskSet
from appliance.call.events import AgentActivity
from appliance.clock import Clock
from appliance.state import State, StateChange

logger = logging.getLogger(__name__)

# A blink code: CODE_ON_S on, CODE_OFF_S off, N times, then CODE_PAUSE_S dark before it repeats.
CODE_ON_S = 0.2
CODE_OFF_S = 0.3
CODE_PAUSE_S = 1.5
# A platform code (E9N) starts with one long blink: LEAD_ON_S on, LEAD_OFF_S off.
LEAD_ON_S = 1.0
LEAD_OFF_S = 0.5
DIM = 0.2


class Led(Protocol):
    """One LED: `value` is its brightness, 0.0 (off) to 1.0 (full)."""

    @property
    def value(self) -> float: ...

    @value.setter
    def value(self, level: float) -> None: ...


@dataclass(frozen=True)
class Pattern:
    """Steps of (brightness 0..1, seconds) that repeat; a single step is held steady."""

    name: str
    steps: tuple[tuple[float, float], ...]
    blinks: int | None = None  # the blink code, for a failure class
    lead: bool = False  # a long blink before the short ones: the platform behind the backend

    @property
    def code_number(self) -> int | None:
        """The number of its error code: N for E0N (N blinks), 90 + N for E9N (long, N)."""
        if self.blinks is None:
            return None
        return 90 + self.blinks if self.lead else self.blinks

    @property
    def steady(self) -> bool:
        """Whether the pattern is one level held (no task needed)."""
        return len(self.steps) == 1


def steady(name: str, level: float) -> Pattern:
    """A level held until the state changes."""
    return Pattern(name, ((level, 0.0),))


def blink(name: str, on_s: float, off_s: float) -> Pattern:
    """Full on for `on_s`, off for `off_s`, repeated."""
    return Pattern(name, ((1.0, on_s), (0.0, off_s)))


def blink_code(count: int) -> Pattern:
    """`count` short blinks, then a pause, repeated: a failure class's code."""
    steps = [(1.0, CODE_ON_S), (0.0, CODE_OFF_S)] * count
    steps[-1] = (0.0, CODE_PAUSE_S)
    return Pattern(f"{count} blinks, pause", tuple(steps), blinks=count)


def platform_code(count: int) -> Pattern:
    """One long blink, then `count` short ones, then a pause: the platform's fault whose
    count matches the device's own fault of that kind (3 unavailable, 4 refused, 5 wait)."""
    steps = [(1.0, LEAD_ON_S), (0.0, LEAD_OFF_S)] + [(1.0, CODE_ON_S), (0.0, CODE_OFF_S)] * count
    steps[-1] = (0.0, CODE_PAUSE_S)
    return Pattern(f"1 long + {count} blinks, pause", tuple(steps), blinks=count, lead=True)


# The one source of truth for what the LED shows: docs/architecture.md and README.md list it,
# and tests check that they agree. CALL_FAILED is shown for 2 s, so it has the shortest code.
PATTERNS: Mapping[State, Pattern] = MappingProxyType(
    {
        State.STARTING: blink("slow blink (0.5 s on, 0.5 s off)", 0.5, 0.5),
        State.AWAITING_APPROVAL: blink("slow pulse (1.5 s on, 1.5 s off)", 1.5, 1.5),
        State.READY: steady("steady dim", DIM),
        State.CONNECTING: blink("fast blink (0.1 s on, 0.1 s off)", 0.1, 0.1),
        # A bell's flicker for the length of the ring sound's burst, then its silence.
        State.RINGING: Pattern(
            "ring flicker (1 s of 0.05 s flashes, then 2 s dark)",
            ((1.0, 0.05), (0.0, 0.05)) * 9 + ((1.0, 0.05), (0.0, 2.05)),
        ),
        State.IN_CALL: steady("steady on", 1.0),
        State.ENDING: blink("short pulses (0.1 s on, 0.4 s off)", 0.1, 0.4),
        State.REJOINING: Pattern(
            "double flash (two 0.1 s flashes, then 0.7 s dark)",
            ((1.0, 0.1), (0.0, 0.1), (1.0, 0.1), (0.0, 0.7)),
        ),
        State.CALL_FAILED: blink_code(2),
        State.BACKEND_UNREACHABLE: blink_code(3),
        State.CREDENTIALS_REJECTED: blink_code(4),
        State.RATE_LIMITED: blink_code(5),
        State.AUDIO_FAULT: blink_code(6),
        State.TOKEN_REJECTED: blink_code(7),
        State.SERVICE_UNAVAILABLE: platform_code(3),
        State.SERVICE_MISCONFIGURED: platform_code(4),
        State.SERVICE_OUT_OF_CREDIT: platform_code(5),
        State.STOPPING: steady("off", 0.0),
    }
)
# Shown instead of READY's or IN_CALL's pattern while the microphone is muted.
MUTED = Pattern("on, 0.2 s dark every 2 s", ((1.0, 1.8), (0.0, 0.2)))
MUTED_STATES = frozenset({State.READY, State.IN_CALL})
# Shown instead of IN_CALL's while the far end's `lk.agent.state` says what it is doing (an
# agent that publishes none keeps "steady on"). Half levels, never dark: it is still a call.
AGENT_PATTERNS: Mapping[AgentActivity, Pattern] = MappingProxyType(
    {
        AgentActivity.LISTENING: Pattern(
            "on, dipping to half for 0.1 s every 1 s", ((1.0, 0.9), (0.5, 0.1))
        ),
        AgentActivity.THINKING: Pattern(
            "rising quarter steps (0.25 s each)", ((0.25, 0.25), (0.5, 0.25), (0.75, 0.25))
        ),
        AgentActivity.SPEAKING: Pattern(
            "flutter between half and full (0.15 s each)", ((1.0, 0.15), (0.5, 0.15))
        ),
    }
)


def pattern_for(state: State, muted: bool = False, agent: AgentActivity | None = None) -> Pattern:
    """What the LED shows in `state`; mute shows only while ready or in a call, the agent's
    state only in a call that is not muted."""
    if muted and state in MUTED_STATES:
        return MUTED
    if state is State.IN_CALL and agent is not None:
        return AGENT_PATTERNS[agent]
    return PATTERNS[state]


class SimulatedLed:
    """An LED that records (clock.monotonic(), brightness) at each change; the newest are kept."""

    def __init__(self, *, clock: Clock, max_history: int = 10_000) -> None:
        self._clock = clock
        self._value = 0.0
        self.history: deque[tuple[float, float]] = deque(
            [(clock.monotonic(), 0.0)], maxlen=max_history
        )

    @property
    def value(self) -> float:
        return self._value

    @value.setter
    def value(self, level: float) -> None:
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"LED brightness must be from 0 to 1, not {level!r}")
        if level != self._value:
            self._value = level
            self.history.append((self._clock.monotonic(), level))


class StatusLed(AsyncResource):
    """Observer: shows each state (and mute) on the LED; a named task plays blinking patterns."""

    def __init__(self, led: Led, *, clock: Clock, initial: State = State.STARTING) -> None:
        self._led = led
        self._clock = clock
        self._initial = initial
        self._pattern: Pattern | None = None
        self._state = initial
        self._muted = False
        self._agent: AgentActivity | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks = TaskSet()  # the pattern playing, and any still stopping
        self._closed = False

    @property
    def pattern(self) -> Pattern | None:
        """The pattern showing now (None before `start` and after `aclose`)."""
        return self._pattern

    async def start(self) -> None:
        """Show the initial state's pattern."""
        self._show(pattern_for(self._initial), self._initial)

    def __call__(self, change: StateChange) -> None:
        self._state, self._muted = change.state, change.muted
        if change.state is not State.IN_CALL:
            self._agent = None  # the next call's agent starts afresh
        self._refresh()

    def show_agent_state(self, agent: AgentActivity | None) -> None:
        """Observer of the call's `Conversation`: the agent listens, thinks or speaks."""
        self._agent = agent if self._state is State.IN_CALL else None
        self._refresh()

    def _refresh(self) -> None:
        if not self._closed:
            self._show(pattern_for(self._state, self._muted, self._agent), self._state)

    async def aclose(self) -> None:
        """Stop the pattern, wait for its task, and leave the LED off."""
        self._closed = True
        self._pattern = None
        self._stop_task()
        await self._tasks.aclose()
        self._led.value = 0.0

    def _show(self, pattern: Pattern, state: State) -> None:
        if pattern is self._pattern:
            return  # the same state again (a reason, say): keep the code's rhythm
        self._pattern = pattern
        self._stop_task()
        # The first level at once, so the LED never shows the previous state's pattern.
        self._led.value = pattern.steps[0][0]
        logger.debug("status LED: %s", pattern.name, extra={"STATE": state.value})
        if not pattern.steady:
            self._task = self._tasks.spawn(self._play(pattern), "status-led")

    def _stop_task(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()

    async def _play(self, pattern: Pattern) -> None:
        """Step through `pattern` forever; its first level is already showing."""
        steps, index = pattern.steps, 0
        try:
            while True:
                await self._clock.sleep(steps[index][1])
                index = (index + 1) % len(steps)
                self._led.value = steps[index][0]
        except Exception:
            logger.exception("status LED failed showing %s", pattern.name)
