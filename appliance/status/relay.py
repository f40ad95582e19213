"""The board's relay output (a door opener, for an intercom), through gpiozero.

A gpiozero `DigitalOutputDevice` on the profile's pin; on the simulated board the same class
runs on a `MockFactory` pin, so a test reads what a real pin would have done. A pulse closes
the relay for a moment on the injected clock; one asked for while another is under way is
refused, not queued (back-to-back pulses would hold a door open for as long as they came).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from appliance.board_profile import BoardRelay
from appliance.clock import Clock
from appliance.errors import SettingsError

# The pin the simulated board's relay sits on when its profile names none.
SIMULATED_RELAY_PIN = "GPIO26"


class GpioRelay:
    """A relay on a GPIO pin: `pulse(seconds)` closes it, then opens it again."""

    def __init__(
        self,
        profile: BoardRelay,
        *,
        clock: Clock,
        pin_factory: Any = None,
        source: object = "board profile",
    ) -> None:
        from gpiozero import DigitalOutputDevice
        from gpiozero.exc import GPIOZeroError

        self._clock = clock
        self._lock = asyncio.Lock()
        self.pin_name = profile.pin or SIMULATED_RELAY_PIN
        try:
            self._device: Any = DigitalOutputDevice(
                self.pin_name,
                active_high=profile.active_high,
                initial_value=False,
                pin_factory=pin_factory,
            )
        except (GPIOZeroError, ValueError) as exc:
            raise SettingsError(source, "relay.pin", f"cannot open the relay: {exc}") from exc

    @property
    def closed(self) -> bool:
        """Whether the relay is closed (the door opener energized) now."""
        return bool(self._device.value)

    async def pulse(self, seconds: float, *, closed: Callable[[], None] | None = None) -> bool:
        """Close the relay for `seconds` (calling `closed` once it is), then open it; False at
        once, the relay untouched, while another pulse is under way."""
        if self._lock.locked():
            return False
        async with self._lock:
            self._device.on()
            try:
                if closed is not None:
                    closed()
                await self._clock.sleep(seconds)
            finally:
                self._device.off()
        return True

    async def aclose(self) -> None:
        """Open the relay and release the pin."""
        self._device.off()
        self._device.close()


def simulated_relay(profile: BoardRelay, *, clock: Clock) -> tuple[GpioRelay, Any]:
    """A relay on a gpiozero mock pin, and that pin (its `states` are what it did)."""
    from gpiozero.pins.mock import MockFactory

    factory = MockFactory()
    relay = GpioRelay(profile, clock=clock, pin_factory=factory)
    return relay, factory.pin(relay.pin_name)
