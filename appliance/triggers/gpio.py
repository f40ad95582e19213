"""The board's call button (and optional mute button or switch) on GPIO, through gpiozero."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from appliance.board_profile import BoardButtons
from appliance.clock import Clock
from appliance.errors import SettingsError
from appliance.triggers.button import Debouncer, PressLogic

logger = logging.getLogger(__name__)


class GpioButtons:
    """gpiozero inputs whose edges, from gpiozero's threads, go to button logic on the loop."""

    def __init__(
        self,
        profile: BoardButtons,
        *,
        clock: Clock,
        long_press_s: float,
        on_short: Callable[[], None],
        on_long: Callable[[], None],
        on_mute: Callable[[bool], None],
        pin_factory: Any = None,
        source: object = "board profile",
    ) -> None:
        try:
            from gpiozero import Button
            from gpiozero.exc import GPIOZeroError
        except ImportError as exc:
            raise SettingsError(
                source, "buttons.backend", "gpio needs gpiozero (pip install 'kiosk-voice[gpio]')"
            ) from exc
        self._loop = asyncio.get_running_loop()
        self._devices: list[Any] = []
        self._logic: list[Debouncer | PressLogic] = []
        self.muted = False
        self._on_mute = on_mute
        try:
            call = Button(
                profile.call_pin, pull_up=profile.pull_up, bounce_time=None, pin_factory=pin_factory
            )
            self._devices.append(call)
            press = PressLogic(
                clock=clock, long_press_s=long_press_s, on_short=on_short, on_long=on_long
            )
            self._wire(
                call,
                Debouncer(
                    clock=clock, debounce_s=profile.debounce_s, initial=False, on_level=press.level
                ),
            )
            self._logic.append(press)
            if profile.mute_pin is not None:
                mute = Button(
                    profile.mute_pin,
                    pull_up=profile.pull_up,
                    bounce_time=None,
                    pin_factory=pin_factory,
                )
                self._devices.append(mute)
                on_level: Callable[[bool], None]
                if profile.mute_kind == "switch":
                    self._set_muted(bool(mute.is_pressed))
                    on_level = self._set_muted
                else:
                    toggle = PressLogic(
                        clock=clock,
                        long_press_s=long_press_s,
                        on_short=lambda: self._set_muted(not self.muted),
                        on_long=lambda: self._set_muted(not self.muted),
                    )
                    self._logic.append(toggle)
                    on_level = toggle.level
                self._wire(
                    mute,
                    Debouncer(
                        clock=clock,
                        debounce_s=profile.debounce_s,
                        initial=bool(mute.is_pressed),
                        on_level=on_level,
                    ),
                )
        except (GPIOZeroError, ValueError) as exc:
            self.close()
            raise SettingsError(source, "buttons", f"cannot open the GPIO inputs: {exc}") from exc

    def _wire(self, device: Any, debouncer: Debouncer) -> None:
        self._logic.append(debouncer)
        loop = self._loop
        device.when_pressed = lambda: loop.call_soon_threadsafe(debouncer.edge, True)
        device.when_released = lambda: loop.call_soon_threadsafe(debouncer.edge, False)

    def _set_muted(self, muted: bool) -> None:
        self.muted = muted
        self._on_mute(muted)

    def close(self) -> None:
        """Release the pins (no more callbacks)."""
        for device in self._devices:
            device.close()
        self._devices.clear()

    async def aclose(self) -> None:
        """Release the pins and drop presses in progress."""
        self.close()
        for logic in self._logic:
            await logic.aclose()
