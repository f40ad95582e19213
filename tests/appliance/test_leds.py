"""The status LED: blink codes, switching at once, off on close; a simulated LED, a manual clock."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.call.events import AgentActivity
from appliance.clock import ManualClock
from appliance.state import FAULT_STATES, State, StateChange
from appliance.status.leds import (
    AGENT_PATTERNS,
    DIM,
    MUTED,
    PATTERNS,
    SimulatedLed,
    StatusLed,
    pattern_for,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
# The documented codes (docs/architecture.md, README.md), written out so a changed table fails.
BLINK_CODES = {
    State.CALL_FAILED: 2,
    State.BACKEND_UNREACHABLE: 3,
    State.CREDENTIALS_REJECTED: 4,
    State.RATE_LIMITED: 5,
    State.AUDIO_FAULT: 6,
    State.TOKEN_REJECTED: 7,
}
# The platform's faults: one long blink, then N short ones (E9N).
PLATFORM_CODES = {
    State.SERVICE_UNAVAILABLE: 3,
    State.SERVICE_MISCONFIGURED: 4,
    State.SERVICE_OUT_OF_CREDIT: 5,
}


@dataclass
class Rig:
    clock: ManualClock
    led: SimulatedLed
    status: StatusLed
    state: State = State.STARTING

    def show(self, state: State, *, muted: bool = False, reason: str | None = None) -> None:
        self.status(StateChange(self.state, state, reason=reason, muted=muted))
        self.state = state

    async def advance(self, seconds: float) -> None:
        async with asyncio.timeout(5):
            await self.clock.advance(seconds)

    def mark(self) -> int:
        return len(self.led.history)

    def since(self, mark: int) -> list[tuple[float, float]]:
        """The LED's changes after `mark`."""
        return list(self.led.history)[mark:]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = ManualClock()
    led = SimulatedLed(clock=clock)
    status = StatusLed(led, clock=clock)
    async with asyncio.timeout(5):
        await status.start()
    yield Rig(clock, led, status)
    async with asyncio.timeout(5):
        await status.aclose()


def flash_groups(history: list[tuple[float, float]], *, pause_s: float = 1.0) -> list[int]:
    """Count lit flashes between dark gaps of at least `pause_s`; only complete groups."""
    groups: list[int] = []
    count, dark_since = 0, None
    for t, value in history:
        if value > 0:
            if dark_since is not None and t - dark_since >= pause_s:
                groups.append(count)
                count = 0
            count += 1
            dark_since = None
        elif dark_since is None:
            dark_since = t
    return groups[1:]  # the first group may have started before the window


async def test_it_starts_with_the_starting_pattern(rig: Rig) -> None:
    assert rig.status.pattern is PATTERNS[State.STARTING]
    assert rig.led.value == 1.0
    await rig.advance(0.6)
    assert rig.led.value == 0.0


@pytest.mark.parametrize("state", sorted(BLINK_CODES, key=lambda s: s.value))
async def test_each_failure_blinks_its_documented_code(rig: Rig, state: State) -> None:
    mark = rig.mark()
    rig.show(state)
    await rig.advance(20)
    groups = flash_groups(rig.since(mark))
    assert len(groups) >= 2
    assert set(groups) == {BLINK_CODES[state]}
    assert PATTERNS[state].blinks == BLINK_CODES[state]


@pytest.mark.parametrize("state", sorted(PLATFORM_CODES, key=lambda s: s.value))
async def test_each_platform_fault_blinks_long_then_its_count(rig: Rig, state: State) -> None:
    mark = rig.mark()
    rig.show(state)
    await rig.advance(30)
    groups = flash_groups(rig.since(mark))
    assert len(groups) >= 2
    assert set(groups) == {PLATFORM_CODES[state] + 1}  # the long one, then N


async def test_call_failed_shows_its_whole_code_in_its_two_seconds(rig: Rig) -> None:
    await rig.advance(0.6)  # starting's blink is off
    mark = rig.mark()
    rig.show(State.CALL_FAILED)
    await rig.advance(2.0)  # the supervisor's CALL_FAILED_HOLD_S
    rig.show(State.READY)
    lit = [t for t, v in rig.since(mark) if v == 1.0]
    assert len(lit) == BLINK_CODES[State.CALL_FAILED]


def test_every_state_and_mute_has_a_distinct_pattern() -> None:
    assert set(PATTERNS) == set(State)
    shown = [p.steps for p in PATTERNS.values()] + [MUTED.steps]
    assert len(set(shown)) == len(shown)
    assert {s for s, p in PATTERNS.items() if p.blinks is not None} == FAULT_STATES


def test_the_agents_states_have_patterns_distinct_from_every_other() -> None:
    assert set(AGENT_PATTERNS) == set(AgentActivity)
    shown = [p.steps for p in PATTERNS.values()] + [MUTED.steps]
    shown += [p.steps for p in AGENT_PATTERNS.values()]
    assert len(set(shown)) == len(shown)
    # Never dark: it is still a call.
    assert all(level > 0 for p in AGENT_PATTERNS.values() for level, _ in p.steps)


async def test_the_agents_state_shows_only_in_a_call_and_not_while_muted(rig: Rig) -> None:
    rig.status.show_agent_state(AgentActivity.SPEAKING)  # not in a call: ignored
    rig.show(State.IN_CALL)
    assert rig.status.pattern is PATTERNS[State.IN_CALL]
    rig.status.show_agent_state(AgentActivity.THINKING)
    assert rig.status.pattern is AGENT_PATTERNS[AgentActivity.THINKING]
    mark = rig.mark()
    await rig.advance(0.8)
    assert [v for _, v in rig.since(mark)] == [0.5, 0.75, 0.25]
    rig.show(State.IN_CALL, muted=True, reason="muted")
    assert rig.status.pattern is MUTED
    rig.show(State.IN_CALL, muted=False, reason="unmuted")
    assert rig.status.pattern is AGENT_PATTERNS[AgentActivity.THINKING]
    rig.status.show_agent_state(None)
    assert rig.status.pattern is PATTERNS[State.IN_CALL]
    rig.status.show_agent_state(AgentActivity.LISTENING)
    rig.show(State.ENDING)
    rig.show(State.IN_CALL)  # a state left forgets the agent's
    assert rig.status.pattern is PATTERNS[State.IN_CALL]


async def test_steady_states_hold_their_level(rig: Rig) -> None:
    rig.show(State.READY)
    assert rig.led.value == DIM
    rig.show(State.IN_CALL)
    mark = rig.mark()
    await rig.advance(30)
    assert rig.led.value == 1.0
    assert rig.since(mark) == []


async def test_a_new_state_replaces_the_pattern_at_once(rig: Rig) -> None:
    rig.show(State.AUDIO_FAULT)
    await rig.advance(0.1)  # inside the first blink
    assert rig.led.value == 1.0
    t_switch, mark = rig.clock.monotonic(), rig.mark()
    rig.show(State.READY)
    assert rig.led.value == DIM  # before the loop runs again
    await rig.advance(20)
    assert rig.since(mark) == [(t_switch, DIM)]  # no stale blink afterwards
    # From one code to another, in the first one's pause: the new code's first blink at once.
    rig.show(State.BACKEND_UNREACHABLE)
    await rig.advance(2.4)  # 3 blinks done, pausing
    assert rig.led.value == 0.0
    mark = rig.mark()
    rig.show(State.CREDENTIALS_REJECTED)
    assert rig.led.value == 1.0
    await rig.advance(20)
    assert set(flash_groups(rig.since(mark))) == {4}


async def test_the_same_state_again_keeps_the_rhythm(rig: Rig) -> None:
    rig.show(State.RATE_LIMITED)
    mark = rig.mark()
    for _ in range(40):  # repeated changes (a reason, say) do not restart the code
        await rig.advance(0.25)
        rig.show(State.RATE_LIMITED, reason="RateLimitedError")
    assert set(flash_groups(rig.since(mark))) == {5}


async def test_mute_shows_while_ready_or_in_a_call(rig: Rig) -> None:
    rig.show(State.READY)
    await rig.advance(1.0)
    t0, mark = rig.clock.monotonic(), rig.mark()
    rig.show(State.READY, muted=True, reason="muted")
    assert rig.status.pattern is MUTED
    await rig.advance(3.9)
    assert rig.since(mark) == [(t0, 1.0), (t0 + 1.8, 0.0), (t0 + 2.0, 1.0), (t0 + 3.8, 0.0)]
    rig.show(State.CONNECTING, muted=True)
    assert rig.status.pattern is PATTERNS[State.CONNECTING]
    rig.show(State.IN_CALL, muted=True)
    assert rig.status.pattern is MUTED
    rig.show(State.IN_CALL, muted=False, reason="unmuted")
    assert rig.status.pattern is PATTERNS[State.IN_CALL]
    assert pattern_for(State.AUDIO_FAULT, muted=True) is PATTERNS[State.AUDIO_FAULT]


@pytest.mark.parametrize("state", [State.IN_CALL, State.CONNECTING, State.AUDIO_FAULT])
async def test_closing_leaves_the_led_off_and_the_task_gone(rig: Rig, state: State) -> None:
    rig.show(state)
    await rig.advance(0.05)
    assert rig.led.value > 0
    async with asyncio.timeout(5):
        await rig.status.aclose()
    assert rig.led.value == 0.0
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "status-led"]
    mark = rig.mark()
    rig.show(State.READY)  # a late change after closing shows nothing
    await rig.advance(10)
    assert rig.since(mark) == []
    assert rig.led.value == 0.0


async def test_a_failing_led_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    class FlakyLed:
        """Fails once, when the pattern first turns it off."""

        def __init__(self) -> None:
            self.value_ = 0.0
            self.failed = False

        @property
        def value(self) -> float:
            return self.value_

        @value.setter
        def value(self, level: float) -> None:
            if level == 0.0 and not self.failed:
                self.failed = True
                raise OSError("pin gone")
            self.value_ = level

    clock, led = ManualClock(), FlakyLed()
    status = StatusLed(led, clock=clock, initial=State.CONNECTING)
    async with asyncio.timeout(5):
        await status.start()
        await clock.advance(1.0)
        assert led.failed
        assert "status LED failed showing fast blink" in caplog.text
        await status.aclose()
    assert led.value == 0.0


def test_simulated_led_checks_levels_and_bounds_its_history() -> None:
    clock = ManualClock()
    led = SimulatedLed(clock=clock, max_history=3)
    with pytest.raises(ValueError, match="from 0 to 1"):
        led.value = 1.5
    for level in (1.0, 0.0, 1.0, 0.5):
        led.value = level
    assert [v for _, v in led.history] == [0.0, 1.0, 0.5]


def _led_column(doc: str) -> dict[str, str]:
    """state -> the LED column of the States table (its last column)."""
    rows = re.findall(r"^\| `(\w+)` \|.*\| (.+?) \|$", doc, flags=re.MULTILINE)
    return dict(rows)


def test_the_docs_show_the_table_the_led_plays() -> None:
    architecture = _led_column((ROOT / "docs" / "architecture.md").read_text())
    for state, pattern in PATTERNS.items():
        assert pattern.name in architecture[state.value], state
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Status LED", 1)[1].split("\n## ", 1)[0]
    for state, count in BLINK_CODES.items():
        assert re.search(rf"^\| {count} \|.*`{state.value}`", section, flags=re.MULTILINE), state
    for state, count in PLATFORM_CODES.items():
        assert PATTERNS[state].lead and PATTERNS[state].blinks == count
        row = rf"^\| 1 long \+ {count} \|.*`{state.value}`"
        assert re.search(row, section, flags=re.MULTILINE), state
    for state, pattern in PATTERNS.items():
        if pattern.blinks is None:
            assert re.search(rf"^\| {re.escape(pattern.name)} \| `{state.value}`", section, re.M)
    assert f"| {MUTED.name} | muted" in section
