"""The status LED on gpiozero's MockFactory pins (PWM and plain), timed by a manual clock."""

from __future__ import annotations

import asyncio

import pytest
from gpiozero.pins.mock import MockFactory, MockPin, MockPWMPin

from appliance.clock import ManualClock
from appliance.errors import SettingsError
from appliance.settings import BoardLeds
from appliance.state import State, StateChange
from appliance.status.gpio_led import GpioLed
from appliance.status.leds import DIM, StatusLed

pytestmark = pytest.mark.integration

PIN = 22


@pytest.mark.parametrize(
    ("pin_class", "pwm", "active_high"),
    [(MockPWMPin, True, True), (MockPin, False, True), (MockPWMPin, True, False)],
)
async def test_blink_code_switch_and_close_on_mock_pins(
    pin_class: type[MockPin], pwm: bool, active_high: bool
) -> None:
    factory = MockFactory(pin_class=pin_class)
    clock = ManualClock()
    led = GpioLed(
        BoardLeds(backend="gpio", status_pin=str(PIN), active_high=active_high, pwm=pwm),
        pin_factory=factory,
    )
    pin = factory.pin(PIN)

    def lit() -> list[float]:
        """The LED's brightness at each recorded pin change."""
        levels = [float(s.state) for s in pin.states]
        return levels if active_high else [1.0 - v for v in levels]

    status = StatusLed(led, clock=clock, initial=State.STOPPING)
    try:
        async with asyncio.timeout(5):
            await status.start()
            assert lit()[-1] == 0.0
            status(StateChange(State.STOPPING, State.READY))
            assert lit()[-1] == pytest.approx(DIM if pwm else 1.0)  # without PWM, dim is on
            status(StateChange(State.READY, State.STOPPING))
            pin.clear_states()
            status(StateChange(State.STOPPING, State.CREDENTIALS_REJECTED))
            await clock.advance(3.1)  # one whole code: 4 blinks and most of the pause
            assert lit() == [0.0] + [1.0, 0.0] * 4
            await clock.advance(0.1)  # the next code's first blink
            assert lit()[-1] == 1.0
            status(StateChange(State.CREDENTIALS_REJECTED, State.IN_CALL))
            await clock.advance(10)
            assert lit()[-1] == 1.0  # steady on (no stale blink turned it off)
            status(StateChange(State.IN_CALL, State.CONNECTING))
            await clock.advance(0.05)
            assert lit()[-1] == 1.0
            await status.aclose()
        assert lit()[-1] == 0.0
        assert pin.state == (0.0 if active_high else 1.0)
    finally:
        led.close()
        factory.close()


def test_pwm_on_a_pin_without_pwm_names_the_key() -> None:
    factory = MockFactory()  # plain MockPin: no PWM
    try:
        with pytest.raises(SettingsError, match=r"leds\.pwm = false") as error:
            GpioLed(BoardLeds(backend="gpio", status_pin=str(PIN), pwm=True), pin_factory=factory)
        assert error.value.key == "leds.status_pin"
    finally:
        factory.close()
