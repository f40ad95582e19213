"""The short chime that tells a person the device heard the wake word."""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from appliance.aio import cancel_and_wait, join_tasks
from appliance.audio.base import SAMPLE_RATE, SAMPLES_PER_FRAME, Frame, Speaker
from appliance.clock import Clock

logger = logging.getLogger(__name__)


def chime(level: float = 0.25) -> Frame:
    """Two rising tones (880 Hz then 1320 Hz, 150 ms in all) with soft edges, whole frames."""
    parts = []
    for freq, ms in ((880.0, 70), (1320.0, 80)):
        t = np.arange(SAMPLE_RATE * ms // 1000) / SAMPLE_RATE
        fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.005)  # 5 ms ramps, no clicks
        parts.append(np.sin(2 * np.pi * freq * t) * fade)
    tone = np.concatenate(parts) * level * 32767
    pad = -len(tone) % SAMPLES_PER_FRAME
    return np.concatenate([tone, np.zeros(pad)]).astype(np.int16)


# Frames written at once before pacing starts: enough to start playout without a gap, and
# well inside the smallest jitter buffer (40 ms), which drops audio written faster than real time.
LEAD_FRAMES = 2


class Earcon:
    """Plays the chime on the speaker in real time without blocking the caller; one at a time."""

    def __init__(self, speaker: Speaker, *, clock: Clock, pcm: Frame | None = None) -> None:
        self._speaker = speaker
        self._clock = clock
        self._pcm = chime() if pcm is None else pcm
        self._task: asyncio.Task[None] | None = None

    def play(self) -> None:
        """Start the chime (ignored while one is playing); call on the event loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._play(), name="earcon")

    async def wait(self) -> None:
        """Until the chime in progress, if any, has been written."""
        await join_tasks(self._task)

    async def aclose(self) -> None:
        """Stop a chime in progress."""
        await cancel_and_wait(self._task)

    async def _play(self) -> None:
        frame_s = SAMPLES_PER_FRAME / SAMPLE_RATE
        t0 = self._clock.monotonic()
        try:
            for index, start in enumerate(range(0, len(self._pcm), SAMPLES_PER_FRAME)):
                due = t0 + (index - LEAD_FRAMES) * frame_s
                if (wait := due - self._clock.monotonic()) > 0:
                    await self._clock.sleep(wait)
                await self._speaker.write(self._pcm[start : start + SAMPLES_PER_FRAME])
        except Exception:
            logger.exception("could not play the earcon")
