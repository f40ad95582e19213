"""The technician's speaker/microphone self-test: level, clipping, echo delay, echo reduction."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from appliance.audio.base import SAMPLES_PER_FRAME
from appliance.audio.measure import (
    clipped_fraction,
    dbfs,
    estimate_delay_ms,
    frames_of,
    probe_sound,
    ratio_db,
)
from appliance.audio.pipeline import AudioPipeline
from appliance.clock import SystemClock
from appliance.settings import BoardAudio

PROBE_SEED = 7
MIN_LEVEL_DBFS = -50.0
MAX_CLIPPED = 0.001
MAX_DELAY_MS = 250.0
MIN_ECHO_REDUCTION_DB = 20.0


@dataclass(frozen=True)
class Check:
    """One measured figure with its verdict and what to do about a failure."""

    name: str
    value: str
    passed: bool
    hint: str

    def format(self) -> str:
        """One line for people."""
        verdict = "PASS" if self.passed else "FAIL"
        line = f"{verdict}  {self.name:<22}{self.value}"
        return line if self.passed else f"{line}\n      hint: {self.hint}"


async def run_selftest(pipeline: AudioPipeline, *, seconds: float = 3.0) -> list[Check]:
    """Play the probe sound, record it back through the pipeline, and judge what came back."""
    probe = probe_sound(seconds, seed=PROBE_SEED)
    raw: list[np.ndarray] = []
    processed: list[np.ndarray] = []
    pipeline.processor.raw_tap = raw
    try:
        for frame in frames_of(probe, SAMPLES_PER_FRAME):
            async with asyncio.timeout(1.0):
                processed.append(await pipeline.microphone.read())
            await pipeline.speaker.write(frame)
    finally:
        pipeline.processor.raw_tap = None
    n = min(len(raw), len(processed))
    mic = np.concatenate(raw[-n:]) if n else np.zeros(0, dtype=np.int16)
    out = np.concatenate(processed[-n:]) if n else np.zeros(0, dtype=np.int16)
    return judge(probe, mic, out, aec=pipeline.processor.options.echo_cancellation)


def judge(probe: np.ndarray, mic: np.ndarray, out: np.ndarray, *, aec: bool) -> list[Check]:
    """The four checks for a played probe, the raw capture and the processed capture."""
    level = dbfs(mic)
    clipped = clipped_fraction(mic)
    delay = estimate_delay_ms(probe, mic, MAX_DELAY_MS)
    half = len(mic) // 2  # judge the echo canceller after it has converged
    reduction = ratio_db(mic[half:], out[half:])
    checks = [
        Check(
            "input level",
            f"{level:.1f} dBFS",
            level >= MIN_LEVEL_DBFS,
            "the microphone hears almost nothing: check the capture device, its channel "
            "and the mixer's capture gain (alsamixer)",
        ),
        Check(
            "clipping",
            f"{100 * clipped:.2f} % of samples",
            clipped <= MAX_CLIPPED,
            "the microphone is overdriven: lower the capture gain or the speaker volume",
        ),
        Check(
            "echo path delay",
            "not found" if delay is None else f"{delay:.0f} ms",
            delay is not None and level >= MIN_LEVEL_DBFS,
            "the test sound did not come back: check the speaker, the playback device and "
            "its volume, and that the microphone can hear the speaker",
        ),
    ]
    if aec:
        checks.append(
            Check(
                "echo reduction",
                f"{reduction:.1f} dB",
                reduction >= MIN_ECHO_REDUCTION_DB,
                "the echo canceller cannot follow the echo: check echo_delay_ms in the board "
                "profile against the measured delay, and that nothing else plays audio",
            )
        )
    return checks


async def run_audio_test(audio: BoardAudio, seconds: float) -> bool:
    """`appliance audio-test`: open the devices, run the self-test, print; True if all passed."""
    if audio.backend != "alsa":
        print(f"audio-test: this board has no ALSA audio (backend = {audio.backend!r})")
        return False
    from appliance.audio.alsa import alsa_pipeline

    pipeline = alsa_pipeline(audio, clock=SystemClock())
    await pipeline.start()
    try:
        if pipeline.session is None:
            print(f"FAIL  audio devices          {pipeline.fault}")
            print("      hint: check the device names in the board profile (aplay -L, arecord -L)")
            print("      and that no other program holds them (fuser -v /dev/snd/*)")
            return False
        checks = await run_selftest(pipeline, seconds=seconds)
    finally:
        await pipeline.aclose()
    for check in checks:
        print(check.format())
    return all(check.passed for check in checks)
