"""The audio seam: what the call and the triggers need from a microphone and a speaker."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 48000
FRAME_MS = 10
SAMPLES_PER_FRAME = SAMPLE_RATE * FRAME_MS // 1000

Frame = npt.NDArray[np.int16]
"""One 10 ms frame of mono 16-bit PCM at SAMPLE_RATE."""


class Microphone(Protocol):
    """A capture stream, open for the daemon's life, handing out 10 ms frames in real time."""

    async def read(self) -> Frame:
        """The next 10 ms frame; waits until it has been captured."""
        ...

    async def aclose(self) -> None:
        """Release the device."""
        ...


class Speaker(Protocol):
    """A playback stream, open for the daemon's life."""

    async def write(self, frame: Frame) -> None:
        """Queue one 10 ms frame for playout."""
        ...

    async def aclose(self) -> None:
        """Release the device."""
        ...
