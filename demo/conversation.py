"""What the demo agent says, the states it shows, and how it hears that a user turn ended."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from demo.signal import rms
from demo.tts import SAMPLE_RATE

AGENT_STATE_ATTRIBUTE = "lk.agent.state"
TRANSCRIPTION_TOPIC = "lk.transcription"
FRAME_SAMPLES = SAMPLE_RATE // 100  # 10 ms
OUTPUT_QUEUE_MS = 100

Pcm = npt.NDArray[np.int16]


class AgentState(StrEnum):
    """Values of the `lk.agent.state` attribute, as LiveKit agents publish them."""

    INITIALIZING = "initializing"
    IDLE = "idle"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"


@dataclass(frozen=True)
class SessionOptions:
    """What the agent says and how it decides a user turn is over."""

    greeting: str = "Hello, you are through to the demo agent. How can I help you today?"
    goodbye: str = "Goodbye, and thank you for calling."
    end_after_turns: int | None = None
    max_session_s: float = 300.0
    speech_threshold_rms: float = 500.0
    min_speech_s: float = 0.2
    end_of_turn_silence_s: float = 0.8
    thinking_s: float = 0.3
    subscriber_wait_s: float = 5.0
    lead_in_s: float = 0.5

    def answer(self, speech_s: float) -> str:
        """The reply to a user turn of `speech_s` seconds."""
        return f"I heard you for {round(speech_s)} seconds. Thank you for calling."


@dataclass(frozen=True)
class ReceivedMessage:
    """One data packet the agent received; `payload` is the decoded JSON, or None."""

    topic: str
    sender: str | None
    payload: Any
    data: bytes
    received_at: float  # time.monotonic()


class Endpointer:
    """Energy endpointing on 48 kHz frames: speech, then enough silence, ends a user turn."""

    def __init__(
        self,
        *,
        threshold_rms: float,
        min_speech_s: float,
        end_silence_s: float,
        rate: int = SAMPLE_RATE,
    ) -> None:
        self._threshold = threshold_rms
        # Counted in samples, not float seconds, so 80 frames of 10 ms are exactly 0.8 s.
        self._rate = rate
        self._min_speech = round(min_speech_s * rate)
        self._end_silence = round(end_silence_s * rate)
        self.reset()

    def reset(self) -> None:
        """Forget any speech heard so far."""
        self._t = 0
        self._speech_start: int | None = None
        self._speech_end = 0

    def push(self, pcm: Pcm) -> float | None:
        """Feed one frame; return the turn's speech duration (s) when the turn just ended."""
        if rms(pcm) >= self._threshold:
            if self._speech_start is None:
                self._speech_start = self._t
            self._speech_end = self._t + pcm.size
        self._t += pcm.size
        if self._speech_start is None or self._t - self._speech_end < self._end_silence:
            return None
        speech = self._speech_end - self._speech_start
        self.reset()
        return speech / self._rate if speech >= self._min_speech else None
