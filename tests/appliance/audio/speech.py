"""Two espeak-ng talkers for the echo tests: a far-end agent and a near-end person."""

from __future__ import annotations

import numpy as np

from appliance.audio.base import SAMPLE_RATE
from appliance.audio.measure import Signal
from demo.tts import SpeechSynthesizer

AGENT = (
    "The weather on the coast will be windy with some rain in the afternoon, and the evening "
    "will be calm and dry with a light breeze from the west."
)
PERSON = "Excuse me, I would like to ask about my booking please."


async def far_and_near(
    seconds: float, near_from_s: float, near_to_s: float
) -> tuple[Signal, Signal]:
    """The agent talking throughout, the person talking over it between two times."""
    n = int(seconds * SAMPLE_RATE)
    agent = await SpeechSynthesizer().synthesize(AGENT)
    person = await SpeechSynthesizer(voice="en+f3").synthesize(PERSON)
    far = np.resize(agent, n).astype(np.int16) if len(agent) < n else agent[:n].copy()
    near = np.zeros(n, dtype=np.int16)
    a = int(near_from_s * SAMPLE_RATE)
    length = max(0, min(len(person), int((near_to_s - near_from_s) * SAMPLE_RATE), n - a))
    near[a : a + length] = (person[:length] * 0.6).astype(np.int16)
    return far, near
