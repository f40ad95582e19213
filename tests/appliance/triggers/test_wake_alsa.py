"""The wake word on an idle device's real audio path: ALSA file devices, 80 ms raw blocks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from appliance.audio.fanout import CaptureFanout
from appliance.clock import SystemClock
from appliance.triggers.wake.base import Detection, WakeDetector
from appliance.triggers.wake.listener import WakeListener
from appliance.triggers.wake.micro import MicroWakeWordEngine
from tests.appliance.audio.alsa_devices import idle_alsa_pipeline
from tests.appliance.triggers.speech import pink_noise, speak

pytestmark = pytest.mark.integration

RATE = 48000


async def _listen(workdir: Path, pcm: np.ndarray, seconds: float) -> list[Detection]:
    pipeline = await idle_alsa_pipeline(workdir, pcm)
    fanout = CaptureFanout(pipeline.microphone)
    heard: list[Detection] = []
    listener = WakeListener(
        WakeDetector(MicroWakeWordEngine("okay_nabu"), refractory_s=2.0),
        capture=fanout,
        on_wake=heard.append,
        clock=SystemClock(),
    )
    listener.set_active(True)
    fanout.start()
    try:
        await asyncio.sleep(seconds)
        assert not pipeline.processor.active, "idle listening bypasses the APM"
    finally:
        await listener.aclose()
        await fanout.aclose()
        await pipeline.aclose()
    return heard


def _in_room_noise(speech: np.ndarray) -> np.ndarray:
    pcm = np.concatenate([np.zeros(RATE, np.int16), speech, np.zeros(RATE * 2, np.int16)])
    noise = pink_noise(len(pcm), 200.0, seed=3)
    return np.clip(pcm.astype(np.int32) + noise, -32768, 32767).astype(np.int16)


async def test_the_wake_word_is_heard_on_the_idle_alsa_path(tmp_path: Path) -> None:
    speech = speak("okay nabu", "en-us", 150, rate=RATE)
    heard = await _listen(tmp_path, _in_room_noise(speech), 1.0 + len(speech) / RATE + 1.5)
    assert [d.keyword for d in heard] == ["Okay Nabu"]


async def test_an_ordinary_sentence_is_not_a_wake_word_on_the_idle_alsa_path(
    tmp_path: Path,
) -> None:
    speech = speak("Okay, now I need the bathroom on the second floor", "en-us", 150, rate=RATE)
    heard = await _listen(tmp_path, _in_room_noise(speech), 1.0 + len(speech) / RATE + 1.5)
    assert heard == []
