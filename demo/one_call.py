"""The device side of one demo call, shared by the main job and its platform variant.

Wait for `ready`, press the button, wait for the answer; let the call run until the far end
ends it, or press again to hang up after `max_call_s`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from appliance.state import State, StateChange


async def press_and_wait(
    states: asyncio.Queue[StateChange],
    press: Callable[[], Awaitable[object]],
    say: Callable[[str], None],
    *,
    answer_within_s: float,
    max_call_s: float,
) -> None:
    """One call from `ready` back to `ready`; TimeoutError if a step never comes."""
    await wait_state(states, State.READY, 20)
    say("pressing the call button (appliance press)")
    await press()
    await wait_state(states, State.IN_CALL, answer_within_s)
    try:
        await wait_state(states, State.READY, max_call_s)
    except TimeoutError:
        say("pressing the call button again to hang up")
        await press()
        await wait_state(states, State.READY, 20)


async def wait_state(states: asyncio.Queue[StateChange], state: State, within_s: float) -> None:
    """Take changes from `states` until one enters `state`; TimeoutError after `within_s`."""
    async with asyncio.timeout(within_s):
        while (await states.get()).state is not state:
            pass


def state_line(change: StateChange) -> str:
    """A state change as the demo narrates it."""
    reason = f" ({change.reason})" if change.reason else ""
    return f"  device: {change.previous.value} -> {change.state.value}{reason}"
