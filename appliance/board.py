"""Opens the board's hardware: the one place that chooses real or simulated parts."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from appliance.audio.base import Microphone, Speaker
from appliance.audio.fanout import CaptureFanout
from appliance.audio.pipeline import AudioPipeline
from appliance.clock import Clock
from appliance.settings import Settings
from appliance.status.leds import Led, SimulatedLed
from appliance.status.relay import GpioRelay, simulated_relay
from appliance.triggers.gpio import GpioButtons
from appliance.triggers.simulated import SimulatedButton


@dataclass
class Board:
    """The opened hardware; closed by the exit stack it was opened on."""

    capture: CaptureFanout
    speaker: Speaker
    button: SimulatedButton | None
    audio: AudioPipeline | None = None
    gpio: GpioButtons | None = None
    led: Led | None = None
    relay: GpioRelay | None = None
    # The simulated relay's gpiozero mock pin (what it did is in its `states`).
    relay_pin: Any = None


async def open_board(
    settings: Settings,
    stack: AsyncExitStack,
    *,
    clock: Clock,
    on_button: Callable[[], None],
    on_long_press: Callable[[], None] = lambda: None,
    on_mute: Callable[[bool], None] = lambda muted: None,
) -> Board:
    """Open the microphone, speaker, button and status LED the board profile names."""
    profile = settings.board  # checked when it was loaded (board_profile.py)
    pipeline: AudioPipeline | None = None
    microphone: Microphone
    speaker: Speaker
    if profile.audio.backend == "alsa":
        from appliance.audio.alsa import alsa_pipeline

        # A device fault here is not fatal: the pipeline reports it and keeps retrying.
        pipeline = alsa_pipeline(profile.audio, clock=clock)
        await pipeline.start()
        stack.push_async_callback(pipeline.aclose)
        microphone, speaker = pipeline.microphone, pipeline.speaker
    else:
        from appliance.audio.simulated import WavMicrophone, WavSpeaker

        sim = settings.simulated
        assert sim.speaker_wav is not None  # checked when the settings were loaded
        microphone = WavMicrophone(sim.microphone_wav, loop=sim.loop_microphone, clock=clock)
        stack.push_async_callback(microphone.aclose)
        speaker = WavSpeaker(sim.speaker_wav)
        stack.push_async_callback(speaker.aclose)
    button: SimulatedButton | None = None
    gpio: GpioButtons | None = None
    if profile.buttons.backend == "gpio":
        gpio = GpioButtons(
            profile.buttons,
            clock=clock,
            long_press_s=settings.button.long_press_s,
            on_short=on_button,
            on_long=on_long_press,
            on_mute=on_mute,
            source=profile.source or profile.name,
        )
        stack.push_async_callback(gpio.aclose)
    else:
        # gpiozero's mock pins, read by the same GpioButtons: a press runs the real code.
        button = SimulatedButton(
            profile.buttons,
            clock=clock,
            long_press_s=settings.button.long_press_s,
            on_short=on_button,
            on_long=on_long_press,
            on_mute=on_mute,
            source=profile.source or profile.name,
        )
        stack.push_async_callback(button.aclose)
    led: Led | None = None
    if profile.leds.backend == "gpio":
        from appliance.status.gpio_led import GpioLed

        gpio_led = GpioLed(profile.leds, source=profile.source or profile.name)
        stack.push_async_callback(gpio_led.aclose)
        led = gpio_led
    elif profile.leds.backend == "simulated":
        led = SimulatedLed(clock=clock)
    relay: GpioRelay | None = None
    relay_pin: Any = None
    if profile.relay.backend == "gpio":
        relay = GpioRelay(profile.relay, clock=clock, source=profile.source or profile.name)
    elif profile.relay.backend == "simulated":
        relay, relay_pin = simulated_relay(profile.relay, clock=clock)
    if relay is not None:
        stack.push_async_callback(relay.aclose)
    capture = CaptureFanout(microphone)
    capture.start()
    stack.push_async_callback(capture.aclose)
    return Board(
        capture=capture,
        speaker=speaker,
        button=button,
        audio=pipeline,
        gpio=gpio,
        led=led,
        relay=relay,
        relay_pin=relay_pin,
    )
