"""Talkers for the echo tests: two espeak-ng ones (a far-end agent and a near-end person) and
speech-like noise for the offline filter tests."""

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


def talker(seconds: float, seed: int) -> Signal:
    """Speech-like noise at 48 kHz: coloured, in bursts of 0.2-0.6 s with pauses between."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    x = np.convolve(rng.normal(0, 1, n), np.hanning(12), "same")
    envelope = np.zeros(n)
    at = 0
    while at < n:
        length = int(rng.uniform(0.2, 0.6) * SAMPLE_RATE)
        envelope[at : at + length] = 1.0
        at += length + int(rng.uniform(0.05, 0.2) * SAMPLE_RATE)
    x *= np.convolve(envelope, np.hanning(480) / 240, "same")
    return (x / np.max(np.abs(x)) * 12000).astype(np.int16)
