"""The fleet's speaker volume: a gain on every frame the device plays, before the speaker.

It sits in front of the board's speaker, so the echo canceller's reverse stream (taken
inside the pipeline from what is written) is exactly what is played. It multiplies the
board profile's own `audio.volume`, which calibrates the hardware.
"""

from __future__ import annotations

import numpy as np

from appliance.audio.base import Frame, Speaker


class ScaledSpeaker:
    """A `Speaker` that plays every frame at `volume` (0.0 to 1.0) of its level."""

    def __init__(self, speaker: Speaker, volume: float = 1.0) -> None:
        # The speaker it plays into (a test or benchmark may put a tap in between).
        self.speaker = speaker
        self.volume = volume

    async def write(self, frame: Frame) -> None:
        """Queue one 10 ms frame, scaled (the speaker may keep it: a new array each)."""
        volume = self.volume
        if volume == 1.0:
            await self.speaker.write(frame)
            return
        scaled = np.empty_like(frame)
        np.multiply(frame, volume, out=scaled, casting="unsafe")
        await self.speaker.write(scaled)

    async def aclose(self) -> None:
        """Release the speaker underneath."""
        await self.speaker.aclose()
