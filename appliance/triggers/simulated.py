"""The simulated board's buttons: gpiozero's mock pins, read by the same code as a real board's."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

from appliance.aio import TaskSet
from appliance.board_profile import BoardButtons
from appliance.clock import Clock
from appliance.triggers.gpio import GpioButtons

# The pin the simulated call button sits on when the profile names none.
SIMULATED_CALL_PIN = "GPIO17"
# A short press lasts this long, or three debounce periods if that is longer.
SHORT_PRESS_S = 0.1
# A long press is held this much past `button.long_press_s` (the debounce comes first).
LONG_PRESS_MARGIN_S = 0.25


class SimulatedButton:
    """A call button on a gpiozero `MockFactory` pin; `press()` is safe from any thread.

    `GpioButtons` reads the pin exactly as it reads a real one (gpiozero's `Button`, then our
    debounce and short/long press logic), so a simulated press runs the real board's code.
    """

    def __init__(
        self,
        profile: BoardButtons,
        *,
        clock: Clock,
        long_press_s: float,
        on_short: Callable[[], None],
        on_long: Callable[[], None],
        on_mute: Callable[[bool], None],
        source: object = "board profile",
    ) -> None:
        from gpiozero.pins.mock import MockFactory

        profile = dataclasses.replace(profile, call_pin=profile.call_pin or SIMULATED_CALL_PIN)
        assert profile.call_pin is not None
        self.factory = MockFactory()
        self.buttons = GpioButtons(
            profile,
            clock=clock,
            long_press_s=long_press_s,
            on_short=on_short,
            on_long=on_long,
            on_mute=on_mute,
            pin_factory=self.factory,
            source=source,
        )
        self.pin: Any = self.factory.pin(profile.call_pin)
        self._pressed_high = not profile.pull_up
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._short_s = max(SHORT_PRESS_S, 3 * profile.debounce_s)
        self._long_s = long_press_s + 2 * profile.debounce_s + LONG_PRESS_MARGIN_S
        self._presses = TaskSet()
        self._one_at_a_time = asyncio.Lock()

    def press(self, *, long: bool = False) -> None:
        """Press the button and release it: briefly, or after a long press has fired."""
        self._loop.call_soon_threadsafe(self._start, long)

    def _start(self, long: bool) -> None:
        if not self._presses.closed:
            self._presses.spawn(
                self.hold(self._long_s if long else self._short_s), "simulated-button-press"
            )

    async def hold(self, seconds: float) -> None:
        """Drive the pin to pressed, wait `seconds` on the clock, release (presses queue)."""
        async with self._one_at_a_time:
            self._drive(pressed=True)
            try:
                await self._clock.sleep(seconds)
            finally:
                self._drive(pressed=False)
            # Released for as long as a short press, so the next queued press is a press.
            await self._clock.sleep(self._short_s)

    def _drive(self, *, pressed: bool) -> None:
        if pressed == self._pressed_high:
            self.pin.drive_high()
        else:
            self.pin.drive_low()

    async def aclose(self) -> None:
        """Drop presses in progress, release the pins."""
        await self._presses.aclose()
        await self.buttons.aclose()
        self.factory.close()
