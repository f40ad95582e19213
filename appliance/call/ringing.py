"""The ring sound: while the device shows `ringing` because operators are being rung, a
ringback cadence plays on the call's speaker, and it stops the moment the state changes (a
party joined, or the call ended). A phone being rung (Click2Call, the change's reason
`PHONE`) plays its own ringback into the room as early media, heard through the same
speaker: the device adds none, so two ringbacks never play at once.

A state observer, like the status LED: it decides nothing. It writes into the speaker the
call plays into, so the echo canceller's reverse stream carries it too, and nothing else
writes there while ringing (the call's mix sends nothing while no party is in the room).
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from appliance.aio import AsyncResource, TaskSet
from appliance.audio.base import SAMPLE_RATE, SAMPLES_PER_FRAME, Frame, Speaker
from appliance.clock import Clock
from appliance.state import State, StateChange

logger = logging.getLogger(__name__)

# North American ringback's two tones, 1 s on and 2 s off: the LED's ring flicker keeps the
# same 3 s rhythm (appliance/status/leds.py).
RING_TONES_HZ = (440.0, 480.0)
RING_ON_S = 1.0
RING_OFF_S = 2.0
# Each tone's amplitude: -20 dBFS apiece, -14 dBFS at the peaks of their sum.
RING_LEVEL = 0.1
RAMP_S = 0.01  # soft edges, no clicks
# Frames written ahead of real time when the ring starts (as the earcon does): enough to
# start playout without a gap, well inside the smallest jitter buffer.
LEAD_FRAMES = 2
# Further behind real time than this (a stalled loop), the cadence starts afresh.
RESYNC_S = 0.2
# The reason of a RINGING change whose far end is a phone: its own ringback is heard.
PHONE = "phone"


def ring_cadence(level: float = RING_LEVEL) -> Frame:
    """One period of the ring: the two tones for RING_ON_S, then silence; whole 10 ms frames."""
    t = np.arange(round(SAMPLE_RATE * RING_ON_S)) / SAMPLE_RATE
    tone = sum(np.sin(2 * np.pi * hz * t) for hz in RING_TONES_HZ)
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / RAMP_S)
    silence = np.zeros(round(SAMPLE_RATE * RING_OFF_S))
    pcm = np.concatenate([tone * fade * level * 32767, silence])
    pad = -len(pcm) % SAMPLES_PER_FRAME
    return np.concatenate([pcm, np.zeros(pad)]).astype(np.int16)


class RingTone(AsyncResource):
    """Observer: plays the ring cadence on `speaker` in real time while the state is RINGING,
    unless what rings is a phone (a RINGING change with reason PHONE, until RINGING ends)."""

    def __init__(self, speaker: Speaker, *, clock: Clock, pcm: Frame | None = None) -> None:
        self._speaker = speaker
        self._clock = clock
        self._pcm = ring_cadence() if pcm is None else pcm
        self._task: asyncio.Task[None] | None = None
        self._tasks = TaskSet()
        self._phone = False  # this ringing is a phone's: its ringback plays, not ours

    @property
    def playing(self) -> bool:
        """Whether the ring is playing now."""
        return self._task is not None and not self._task.done()

    def __call__(self, change: StateChange) -> None:
        ringing = change.state is State.RINGING
        self._phone = ringing and (change.reason == PHONE or self._phone)
        if ringing and not self._phone:
            if not self.playing and not self._tasks.closed:
                self._task = self._tasks.spawn(self._play(), "ring-tone")
        elif self._task is not None:
            # At once: the first remote voice must not be talked over by the bell.
            task, self._task = self._task, None
            task.cancel()

    async def aclose(self) -> None:
        """Stop the ring and wait for its task."""
        self._task = None
        await self._tasks.aclose()

    async def _play(self) -> None:
        frames = len(self._pcm) // SAMPLES_PER_FRAME
        frame_s = SAMPLES_PER_FRAME / SAMPLE_RATE
        t0, index = self._clock.monotonic(), 0
        try:
            while True:
                due = t0 + (index - LEAD_FRAMES) * frame_s
                wait = due - self._clock.monotonic()
                if wait > 0:
                    await self._clock.sleep(wait)
                elif wait < -RESYNC_S:
                    t0, index = self._clock.monotonic(), 0
                start = (index % frames) * SAMPLES_PER_FRAME
                await self._speaker.write(self._pcm[start : start + SAMPLES_PER_FRAME])
                index += 1
        except Exception:
            logger.exception("could not play the ring")
