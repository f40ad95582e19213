"""Audio benchmark: echo reduction, double talk, capture-path CPU, added latency, buffering."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from appliance.audio.base import FRAME_MS, SAMPLES_PER_FRAME
from appliance.audio.measure import probe_sound
from appliance.audio.processing import AudioProcessor, ProcessingOptions
from appliance.call.mixer import Mixer
from tests.appliance.audio.echo_scenario import ECHO_AUDIO, run_echo
from tests.appliance.audio.speech import far_and_near

pytestmark = pytest.mark.bench

SECONDS, NEAR_FROM, NEAR_TO = 12.0, 8.0, 11.0


def apm_cpu_pct(far: np.ndarray, *, paced: bool, frames: int = 500) -> float:
    """The APM's capture side alone (all four stages), % of one core for real-time audio.

    Paced: one frame every 10 ms, as the capture thread calls it; otherwise back to back.
    The reverse stream is fed too (untimed), so the echo canceller does its full work.
    """
    processor = AudioProcessor(ProcessingOptions())
    chunks = [far[i * SAMPLES_PER_FRAME : (i + 1) * SAMPLES_PER_FRAME] for i in range(frames)]
    used = 0.0
    for chunk in chunks:
        processor.process_render(chunk)
        t0 = time.thread_time()
        processor.process_capture(chunk)
        used += time.thread_time() - t0
        if paced:
            time.sleep(FRAME_MS / 1000)
    return 100 * used / (frames * FRAME_MS / 1000)


def line(name: str, value: float, unit: str, target: str = "", ok: bool = True) -> str:
    verdict = f"target {target:<10}{'PASS' if ok else 'FAIL'}" if target else ""
    return f"  {name:<44}{value:8.2f} {unit:<6} {verdict}".rstrip()


async def test_audio_pipeline_figures(tmp_path: Path) -> None:
    far, near = await asyncio.wait_for(far_and_near(SECONDS, NEAR_FROM, NEAR_TO), 60)
    run = await asyncio.wait_for(run_echo(tmp_path / "echo", far, near), 60)
    # CPU of the whole capture path at 48 kHz with all four APM stages, AGC included.
    full = dataclasses.replace(ECHO_AUDIO, auto_gain_control=True)
    cpu_run = await asyncio.wait_for(run_echo(tmp_path / "cpu", far, near, audio=full), 60)

    apm_paced = apm_cpu_pct(far, paced=True)
    apm_batch = apm_cpu_pct(far, paced=False)
    erle_first = run.erle_db(0.3, 2.0)
    erle_steady = run.erle_db(2.0, NEAR_FROM)
    near_loss = run.near_end_loss_db(NEAR_FROM, NEAR_TO)
    cpu_pct = 100 * cpu_run.capture_thread_cpu_s / cpu_run.wall_s
    handoff = np.array(run.handoff_ms)
    # Capture: one 10 ms period waits in ALSA before the read returns, then the hand-off.
    added_ms = float(np.percentile(handoff, 99))
    depth = np.array(run.playback_depth_ms)
    buffering = float(np.mean(depth)) + FRAME_MS  # + the period being played
    lines = [
        "audio benchmark (ALSA file devices paced in real time, simulated room, espeak-ng talkers)",
        line("echo reduction (ERLE), first 2 s", erle_first, "dB", ">= 30", erle_first >= 30),
        line("echo reduction (ERLE), steady state", erle_steady, "dB", ">= 30", erle_steady >= 30),
        line("near-end attenuation in double talk", near_loss, "dB", "<= 3", near_loss <= 3),
        line("capture path CPU, % of one core (48 kHz)", cpu_pct, "%", "<= 2", cpu_pct <= 2),
        line("  of which the APM alone, every 10 ms", apm_paced, "%"),
        line("  (the APM alone, frames back to back)", apm_batch, "%"),
        line("capture -> consumer added latency (p99)", added_ms, "ms", "<= 20", added_ms <= 20),
        line("  (median hand-off)", float(np.median(handoff)), "ms"),
        line("playback buffering (mean)", buffering, "ms", "<= 60", buffering <= 60),
        line("  (max)", float(np.max(depth)) + FRAME_MS, "ms"),
    ]
    print("\n" + "\n".join(lines))
    assert erle_steady >= 30


def mix_us_per_frame(tracks: int, frames: int = 3000) -> float:
    """Microseconds of one thread's CPU per 10 ms frame: `tracks` pushes and one mix."""
    mixer = Mixer()
    signals = [probe_sound(2.0, seed=i, level_dbfs=-9) for i in range(tracks)]
    keys = [f"t{i}" for i in range(tracks)]
    for key in keys:
        mixer.add_track(key)
    chunks = [
        [s[(j % 200) * SAMPLES_PER_FRAME : (j % 200 + 1) * SAMPLES_PER_FRAME] for s in signals]
        for j in range(frames)
    ]
    t0 = time.thread_time()
    for chunk in chunks:
        for key, samples in zip(keys, chunk, strict=True):
            mixer.push(key, samples)
        mixer.mix()
    return 1e6 * (time.thread_time() - t0) / frames


def test_mixing_cost_per_track() -> None:
    costs = {n: min(mix_us_per_frame(n) for _ in range(3)) for n in (1, 2, 4, 8)}
    per_track = (costs[8] - costs[1]) / 7
    lines = [
        "remote-audio mixer (push + mix per 10 ms frame, one thread, best of 3)",
        *(line(f"{n} track{'s' if n > 1 else ''}", us, "us") for n, us in costs.items()),
        line("each extra track", per_track, "us"),
        line("  as % of one core", per_track / (FRAME_MS * 10), "%"),
    ]
    print("\n" + "\n".join(lines))
    assert per_track < 100  # 1 % of a core per extra voice at most
