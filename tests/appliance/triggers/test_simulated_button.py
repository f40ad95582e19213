"""The simulated board's button: gpiozero mock pins under the real board's button code."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.board import Board, open_board
from appliance.clock import ManualClock
from appliance.settings import load_settings
from appliance.triggers.simulated import SimulatedButton

pytestmark = pytest.mark.integration


@dataclass
class SimBoard:
    board: Board
    clock: ManualClock
    events: list[str] = field(default_factory=list)

    @property
    def button(self) -> SimulatedButton:
        assert self.board.button is not None
        return self.board.button


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[SimBoard]:
    config = tmp_path / "appliance.toml"
    config.write_text(
        '[device]\nstate_dir = "state"\n[backend]\nurl = "http://127.0.0.1:9"\n'
        '[board]\nprofile = "simulated"\n[button]\nlong_press_s = 1.5\n'
        '[simulated]\nspeaker_wav = "speaker.wav"\n'
    )
    settings = load_settings(config)
    clock = ManualClock()
    events: list[str] = []
    async with AsyncExitStack() as stack:
        board = await open_board(
            settings,
            stack,
            clock=clock,
            on_button=lambda: events.append("short"),
            on_long_press=lambda: events.append("long"),
        )
        yield SimBoard(board, clock, events)


async def test_the_simulated_board_has_a_mock_pin_button_and_no_real_gpio(sim: SimBoard) -> None:
    assert sim.board.gpio is None
    assert type(sim.button.pin).__name__ == "MockPin"
    assert sim.button.pin.state == 1  # pulled up: released


async def test_a_bounce_shorter_than_the_debounce_is_one_press(sim: SimBoard) -> None:
    pin = sim.button.pin
    for _ in range(4):  # contact bounce: edges 5 ms apart, well inside debounce_s (30 ms)
        pin.drive_low()
        await sim.clock.advance(0.005)
        pin.drive_high()
        await sim.clock.advance(0.005)
    pin.drive_low()
    await sim.clock.advance(0.2)
    for _ in range(3):
        pin.drive_high()
        await sim.clock.advance(0.005)
        pin.drive_low()
        await sim.clock.advance(0.005)
    pin.drive_high()
    await sim.clock.advance(0.2)
    assert sim.events == ["short"]


async def test_a_glitch_alone_is_no_press(sim: SimBoard) -> None:
    sim.button.pin.drive_low()
    await sim.clock.advance(0.01)
    sim.button.pin.drive_high()
    await sim.clock.advance(0.5)
    assert sim.events == []


async def test_press_is_short_and_press_long_is_long(sim: SimBoard) -> None:
    sim.button.press()
    await sim.clock.advance(0.5)
    assert sim.events == ["short"]
    sim.button.press(long=True)
    await sim.clock.advance(1.4)
    assert sim.events == ["short"]  # not yet: a long press fires at long_press_s
    await sim.clock.advance(0.5)
    assert sim.events == ["short", "long"]
    await sim.clock.advance(1.0)
    assert sim.events == ["short", "long"]  # and no short press on its release
    assert sim.button.pin.state == 1


async def test_presses_queue_rather_than_overlap(sim: SimBoard) -> None:
    sim.button.press()
    sim.button.press()
    sim.button.press(long=True)
    for _ in range(40):
        await sim.clock.advance(0.1)
    assert sim.events == ["short", "short", "long"]
