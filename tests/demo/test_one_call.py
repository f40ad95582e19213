"""The demo's call from the device side (`demo/one_call.py`, shared by both jobs): press,
wait for the answer, let the far end end it, or press again to hang up after the limit."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from appliance.state import State, StateChange
from demo.one_call import press_and_wait, state_line

pytestmark = pytest.mark.unit


class Kiosk:
    """Each press moves the states on, as the daemon would: ready -> in_call -> ready."""

    def __init__(self, *, far_end_hangs_up: bool) -> None:
        self.states: asyncio.Queue[StateChange] = asyncio.Queue()
        self.presses = 0
        self._far_end_hangs_up = far_end_hangs_up
        self._go(State.STARTING, State.READY)

    def _go(self, *path: State) -> None:
        for previous, state in itertools.pairwise(path):
            self.states.put_nowait(StateChange(previous, state))

    async def press(self) -> None:
        self.presses += 1
        if self.presses == 1:
            self._go(State.READY, State.CONNECTING, State.IN_CALL)
            if self._far_end_hangs_up:
                self._go(State.IN_CALL, State.ENDING, State.READY)
        else:
            self._go(State.IN_CALL, State.ENDING, State.READY)


@pytest.mark.parametrize("far_end_hangs_up", [True, False])
async def test_one_call_is_pressed_and_hung_up_only_if_it_runs_long(
    far_end_hangs_up: bool,
) -> None:
    kiosk, said = Kiosk(far_end_hangs_up=far_end_hangs_up), list[str]()
    async with asyncio.timeout(5):
        await press_and_wait(
            kiosk.states, kiosk.press, said.append, answer_within_s=1, max_call_s=0.05
        )
    assert kiosk.presses == (1 if far_end_hangs_up else 2)
    assert ("pressing the call button again to hang up" in said) is not far_end_hangs_up
    assert kiosk.states.empty()


async def test_a_call_never_answered_is_a_timeout() -> None:
    kiosk = Kiosk(far_end_hangs_up=False)

    async def press_nothing_happens() -> None:
        kiosk.presses += 1

    with pytest.raises(TimeoutError):
        await press_and_wait(
            kiosk.states, press_nothing_happens, print, answer_within_s=0.05, max_call_s=1
        )


def test_a_change_is_narrated_with_its_reason() -> None:
    change = StateChange(State.IN_CALL, State.ENDING, reason="platform_ended")
    assert state_line(change) == "  device: in_call -> ending (platform_ended)"
