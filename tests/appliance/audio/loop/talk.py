"""The loop's talkers: the agent (espeak-ng, through the kiosk's speaker) and a person."""

from __future__ import annotations

import numpy as np

from appliance.audio.base import SAMPLE_RATE
from appliance.audio.measure import Signal, dbfs
from appliance.audio.room import ReverbRoom
from demo.tts import SpeechSynthesizer
from tests.appliance.audio.loop.harness import Script
from tests.appliance.audio.speech import AGENT, PERSON


async def barge_in(
    seconds: float, near_at_s: tuple[float, ...], room: ReverbRoom, *, ser_db: float = 0.0
) -> Script:
    """The agent talking throughout; the person talking over it at `near_at_s`.

    `ser_db` is the person's level at the microphone relative to the agent's echo (both
    speech-active RMS): 0 dB is a person at arm's length from a kiosk at a moderate volume.
    """
    agent = await SpeechSynthesizer().synthesize(AGENT)
    person = await SpeechSynthesizer(voice="en+f3").synthesize(PERSON)
    n = int(seconds * SAMPLE_RATE)
    far = np.resize(agent, n).astype(np.int16)
    target = _active_dbfs(agent) + room.gain_db + ser_db
    gain = 10 ** ((target - _active_dbfs(person)) / 20)
    near = np.clip(person * gain, -32768, 32767).astype(np.int16)
    return Script(far=far, near=near, near_at_s=near_at_s)


def _active_dbfs(x: Signal) -> float:
    """The level of the 10 ms frames within 30 dB of the loudest: speech, not its pauses."""
    frames = x[: len(x) // 480 * 480].reshape(-1, 480).astype(np.float64)
    levels = 10 * np.log10(np.mean(frames**2, axis=1) / 32768**2 + 1e-12)
    return dbfs(frames[levels > levels.max() - 30].reshape(-1).astype(np.int16))
