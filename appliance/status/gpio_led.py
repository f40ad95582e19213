"""The board's status LED on a GPIO pin, through gpiozero."""

from __future__ import annotations

from typing import Any

from appliance.errors import SettingsError
from appliance.settings import BoardLeds


class GpioLed:
    """A gpiozero PWMLED (brightness levels) or LED (any level above 0 is on)."""

    def __init__(
        self,
        profile: BoardLeds,
        *,
        pin_factory: Any = None,
        source: object = "board profile",
    ) -> None:
        try:
            from gpiozero import LED, PWMLED
            from gpiozero.exc import GPIOZeroError
        except ImportError as exc:
            raise SettingsError(
                source, "leds.backend", "gpio needs gpiozero (pip install 'kiosk-voice[gpio]')"
            ) from exc
        self._pwm = profile.pwm
        device_class = PWMLED if profile.pwm else LED
        try:
            self._device: Any = device_class(
                profile.status_pin, active_high=profile.active_high, pin_factory=pin_factory
            )
        except (GPIOZeroError, ValueError) as exc:
            hint = " (no PWM on this pin? set leds.pwm = false)" if profile.pwm else ""
            raise SettingsError(
                source, "leds.status_pin", f"cannot open the status LED: {exc}{hint}"
            ) from exc

    @property
    def value(self) -> float:
        return float(self._device.value)

    @value.setter
    def value(self, level: float) -> None:
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"LED brightness must be from 0 to 1, not {level!r}")
        self._device.value = level if self._pwm else level > 0

    def close(self) -> None:
        """Release the pin."""
        self._device.close()

    async def aclose(self) -> None:
        """Release the pin (for an exit stack)."""
        self.close()
