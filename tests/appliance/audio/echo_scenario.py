"""A far-end talker through the speaker, echoed back by a simulated room, on ALSA file devices."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from appliance.audio.alsa import AlsaSession, StreamStats, alsa_pipeline
from appliance.audio.base import SAMPLE_RATE, SAMPLES_PER_FRAME
from appliance.audio.jitter import JitterBuffer
from appliance.audio.measure import Signal, frames_of, probe_sound, ratio_db
from appliance.audio.room import RoomEcho
from appliance.clock import SystemClock
from appliance.settings import BoardAudio
from tests.appliance.audio.alsa_devices import use_config, write_file_devices

FRAME_S = SAMPLES_PER_FRAME / SAMPLE_RATE

# The room's delay counts from when the far-end frame is handed to the speaker: the jitter
# buffer's prefill and the playback period come before the sound leaves the loudspeaker.
ROOM = RoomEcho(delay_ms=60.0, gain=0.5, reflections=((7.0, 0.3), (19.0, 0.12)))
ECHO_AUDIO = BoardAudio(
    backend="alsa",
    pacing="clock",
    echo_cancellation="software",
    noise_suppression=True,
    high_pass_filter=True,
    # AGC off while measuring: a gain that moves would be counted as echo reduction or loss.
    auto_gain_control=False,
)


@dataclass
class EchoRun:
    """What the microphone got, what the pipeline made of it, and how long each hand-off took."""

    far_end: Signal
    near_end: Signal
    mic: Signal
    out: Signal
    handoff_ms: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    playback_depth_ms: list[float] = field(default_factory=list)
    capture_thread_cpu_s: float = 0.0
    # Real-time glitches while it ran (jitter-buffer under- and overruns, ALSA xruns): a
    # starved machine shifts the speaker against the precomputed microphone.
    glitches: int = 0

    @property
    def clean(self) -> bool:
        """Whether the run kept real time: its figures then measure the canceller alone."""
        return self.glitches == 0

    def window(self, x: Signal, start_s: float, end_s: float) -> Signal:
        """`x` between two times (seconds)."""
        return x[int(start_s * SAMPLE_RATE) : int(end_s * SAMPLE_RATE)]

    def erle_db(self, start_s: float, end_s: float) -> float:
        """Echo reduction over a stretch where only the far end talks."""
        return ratio_db(
            self.window(self.mic, start_s, end_s), self.window(self.out, start_s, end_s)
        )

    def near_end_loss_db(self, start_s: float, end_s: float) -> float:
        """How much quieter the near-end talker comes out than they went in (double talk)."""
        near = self.window(self.near_end, start_s, end_s)
        return ratio_db(near, self.window(self.out, start_s, end_s))


# The first frames fill the jitter buffer: underruns there are the start, not a glitch.
WARMUP_FRAMES = 10


def _glitches(jitter: JitterBuffer, stats: StreamStats) -> int:
    return jitter.underruns + jitter.overflows + stats.capture_xruns + stats.playback_xruns


def thread_cpu_s(session: AlsaSession, name: str) -> float:
    """CPU time one of the session's threads has used (Linux schedstat)."""
    for thread in session._threads:
        if thread.name == name and thread.native_id is not None:
            stat = Path(f"/proc/self/task/{thread.native_id}/schedstat").read_text()
            return int(stat.split()[0]) / 1e9
    raise LookupError(name)


def talkers(seconds: float, near_from_s: float, near_to_s: float) -> tuple[Signal, Signal]:
    """A far-end talker for the whole run and a quieter near-end talker in one stretch."""
    far = probe_sound(seconds, seed=11, level_dbfs=-14.0)
    near = np.zeros_like(far)
    a, b = int(near_from_s * SAMPLE_RATE), int(near_to_s * SAMPLE_RATE)
    near[a:b] = probe_sound(near_to_s - near_from_s, seed=23, level_dbfs=-20.0)[: b - a]
    return far, near


async def run_echo(
    workdir: Path,
    far_end: Signal,
    near_end: Signal,
    *,
    room: RoomEcho = ROOM,
    audio: BoardAudio = ECHO_AUDIO,
) -> EchoRun:
    """Play `far_end`, capture room(far_end) + `near_end` through real libasound, in real time."""
    mic = room.apply(far_end, near_end)
    devices = write_file_devices(workdir, mic)
    use_config(devices.config)
    audio = dataclasses.replace(
        audio, capture_device=devices.capture, playback_device=devices.playback
    )
    pipeline = alsa_pipeline(audio, clock=SystemClock())
    run = EchoRun(far_end, near_end, mic, np.zeros(0, dtype=np.int16))
    now = time.monotonic
    pipeline.microphone.on_handoff = lambda read_at: run.handoff_ms.append((now() - read_at) * 1000)
    out: list[Signal] = []
    far_frames = frames_of(far_end, SAMPLES_PER_FRAME)
    await pipeline.start()
    try:
        assert pipeline.fault is None, pipeline.fault
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        session = pipeline.session
        assert isinstance(session, AlsaSession)
        capture_cpu0 = thread_cpu_s(session, "alsa-capture")
        jitter, stats = pipeline.jitter, session.stats
        glitches0: int | None = None
        for index, frame in enumerate(far_frames):
            if index == WARMUP_FRAMES:
                glitches0 = _glitches(jitter, stats)
            async with asyncio.timeout(1.0):
                out.append(await pipeline.microphone.read())
            await pipeline.speaker.write(frame)
            run.playback_depth_ms.append(
                pipeline.jitter.depth * FRAME_S * 1000 + session.stats.playback_delay_ms
            )
        if glitches0 is not None:
            run.glitches = _glitches(jitter, stats) - glitches0
        run.wall_s = time.perf_counter() - wall0
        run.cpu_s = time.thread_time() - cpu0
        run.capture_thread_cpu_s = thread_cpu_s(session, "alsa-capture") - capture_cpu0
    finally:
        await pipeline.aclose()
    run.out = np.concatenate(out)[: len(mic)]
    run.mic = mic[: len(run.out)]
    return run
