"""The wake-word engine seam: 16 kHz int16 audio in, detections (keyword, score, time) out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from appliance.errors import ApplianceError

ENGINE_RATE = 16000

Pcm16k = npt.NDArray[np.int16]


class WakeWordError(ApplianceError, RuntimeError):
    """A wake-word engine is not installed or could not be started."""


@dataclass(frozen=True)
class Detection:
    """One detection: which keyword, the engine's score (None if it has none), and when."""

    keyword: str
    score: float | None
    sample: int  # 16 kHz samples since the engine started (or was reset)

    @property
    def time_s(self) -> float:
        """Seconds of audio since the engine started."""
        return self.sample / ENGINE_RATE


class WakeEngine(Protocol):
    """A wake-word engine: feed 16 kHz mono int16 audio of any length, get detections."""

    @property
    def name(self) -> str:
        """The engine, e.g. "micro" or "porcupine"."""
        ...

    @property
    def keywords(self) -> tuple[str, ...]:
        """What it listens for."""
        ...

    def process(self, pcm: Pcm16k) -> list[Detection]:
        """Consume `pcm`; return the detections it completed (sample counts from the start)."""
        ...

    def reset(self) -> None:
        """Forget the audio heard so far (the sample count starts again at 0)."""
        ...

    def close(self) -> None:
        """Release the engine."""
        ...


class WakeDetector:
    """An engine plus a refractory period in audio time: one detection per utterance."""

    def __init__(self, engine: WakeEngine, *, refractory_s: float) -> None:
        self.engine = engine
        self._refractory = round(refractory_s * ENGINE_RATE)
        self._last: int | None = None

    def process(self, pcm: Pcm16k) -> list[Detection]:
        """Detections in `pcm`, minus those within the refractory period of the last one."""
        kept = []
        for detection in self.engine.process(pcm):
            if self._last is not None and detection.sample - self._last < self._refractory:
                continue
            self._last = detection.sample
            kept.append(detection)
        return kept

    def reset(self) -> None:
        """Start afresh (after a pause in listening)."""
        self.engine.reset()
        self._last = None
