"""`appliance wake-test`: the configured engine over a WAV file or the live microphone."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

from appliance.audio.simulated import read_wav_mono
from appliance.clock import SystemClock
from appliance.settings import Settings
from appliance.triggers.wake.base import ENGINE_RATE, Detection, WakeDetector, WakeEngine
from appliance.triggers.wake.engines import open_engine, resolve_engine
from appliance.triggers.wake.listener import WakeListener

CHUNK = ENGINE_RATE // 100  # 10 ms, as the device feeds it


def with_threshold(settings: Settings, threshold: float | None) -> Settings:
    """`settings` with the engine's threshold (micro cutoff, Porcupine sensitivity) replaced."""
    if threshold is None:
        return settings
    wake = settings.wake
    if resolve_engine(settings) == "porcupine":
        count = len(wake.porcupine.keyword_paths or wake.porcupine.keywords)
        porcupine = dataclasses.replace(wake.porcupine, sensitivities=(threshold,) * count)
        wake = dataclasses.replace(wake, porcupine=porcupine)
    else:
        micro = dataclasses.replace(wake.micro, probability_cutoff=threshold)
        wake = dataclasses.replace(wake, micro=micro)
    return dataclasses.replace(settings, wake=wake)


def describe(engine: WakeEngine) -> str:
    """One line naming the engine and what it listens for."""
    return f"engine {engine.name}, keywords: {', '.join(engine.keywords)}"


def format_detection(detection: Detection, at_s: float) -> str:
    """A detection as technicians read it: time, keyword, score."""
    score = "n/a (Porcupine has no score)" if detection.score is None else f"{detection.score:.3f}"
    return f"{at_s:9.2f} s  {detection.keyword:<16} score {score}"


def scan_wav(settings: Settings, wav: Path, out: Callable[[str], None]) -> int:
    """Print each detection in `wav`; returns how many there were."""
    engine = open_engine(settings)
    if engine is None:
        out('the wake word is off (wake.engine = "off")')
        return 0
    try:
        pcm = read_wav_mono(wav, sample_rate=ENGINE_RATE)
        out(f"{describe(engine)}; {wav}: {len(pcm) / ENGINE_RATE:.1f} s")
        detector = WakeDetector(engine, refractory_s=settings.wake.refractory_s)
        count = 0
        for start in range(0, len(pcm), CHUNK):
            for detection in detector.process(pcm[start : start + CHUNK]):
                out(format_detection(detection, detection.time_s))
                count += 1
    finally:
        engine.close()
    out(f"{count} detection(s)")
    return count


async def listen_live(settings: Settings, seconds: float, out: Callable[[str], None]) -> int:
    """Listen on the board's microphone for `seconds` and print each detection."""
    from appliance.board import open_board

    engine = open_engine(settings)
    if engine is None:
        out('the wake word is off (wake.engine = "off")')
        return 0
    clock = SystemClock()
    found: list[Detection] = []
    t0 = clock.monotonic()

    def on_wake(detection: Detection) -> None:
        found.append(detection)
        out(format_detection(detection, clock.monotonic() - t0))

    async with AsyncExitStack() as stack:
        board = await open_board(settings, stack, clock=clock, on_button=lambda: None)
        listener = WakeListener(
            WakeDetector(engine, refractory_s=settings.wake.refractory_s),
            capture=board.capture,
            on_wake=on_wake,
            clock=clock,
        )
        stack.push_async_callback(listener.aclose)
        out(f"{describe(engine)}; listening for {seconds:.0f} s (Ctrl-C stops)")
        listener.set_active(True)
        with contextlib.suppress(asyncio.CancelledError):
            await clock.sleep(seconds)
    out(f"{len(found)} detection(s)")
    return len(found)
