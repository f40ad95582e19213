"""A call on an ALSA board (libasound file devices): idle listening, then call audio, then idle."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from appliance.audio.alsa import AlsaSession
from appliance.audio.base import SAMPLES_PER_FRAME
from appliance.audio.measure import frames_of
from appliance.audio.pipeline import AudioPipeline
from appliance.audio.processing import AudioProcessor, ProcessingOptions
from appliance.state import State
from demo.signal import slip_tolerant_xcorr
from demo.stack import USER_SENTENCE, LocalStack
from demo.tts import synthesize
from tests.appliance.audio.alsa_devices import use_config, write_file_devices
from tests.e2e.conftest import run_device

pytestmark = pytest.mark.e2e

RATE = 48000


def _board(path: Path, capture: str, playback: str) -> Path:
    path.write_text(
        'name = "alsa-file"\n\n[audio]\nbackend = "alsa"\n'
        f'capture_device = "{capture}"\nplayback_device = "{playback}"\n'
        'pacing = "clock"\nhigh_pass_filter = true\n'
        # The high-pass filter alone: file devices have no acoustic path from speaker to
        # microphone, so an echo canceller never finds a delay and suppresses the person while
        # the agent talks; echo is measured with a simulated room in tests/appliance/audio.
        'echo_cancellation = "off"\nnoise_suppression = false\nauto_gain_control = false\n\n'
        '[buttons]\nbackend = "simulated"\n\n[leds]\nbackend = "none"\n'
    )
    return path


def _high_passed(pcm: np.ndarray) -> np.ndarray:
    """`pcm` through the same APM stage the board runs (the filter shifts phase, so the
    agent's audio is compared with this rather than with the raw speech)."""
    processor = AudioProcessor(ProcessingOptions(False, False, True, False))
    frames = frames_of(pcm, SAMPLES_PER_FRAME)
    return np.concatenate([processor.process_capture(f) for f in frames])


def _mode(pipeline: AudioPipeline) -> tuple[bool, int]:
    session = pipeline.session
    assert isinstance(session, AlsaSession)
    return pipeline.processor.active, session._block_periods


async def test_a_call_on_alsa_devices_gets_processed_frames_and_idle_gets_raw_blocks(
    stack: LocalStack, tmp_path: Path
) -> None:
    speech = await asyncio.wait_for(synthesize(USER_SENTENCE), 30)
    gap = np.zeros(RATE * 2, dtype=np.int16)
    mic = np.concatenate([gap, speech, gap, speech, gap, speech, np.zeros(RATE * 20, np.int16)])
    devices = write_file_devices(tmp_path / "alsa", mic)
    use_config(devices.config)
    board = _board(tmp_path / "alsa-file.toml", devices.capture, devices.playback)
    files = stack.write_device("kiosk-alsa", None, agent_join_timeout_s=20, cooldown_s=0)
    files.config.write_text(
        files.config.read_text().replace('profile = "simulated"', f'profile = "{board}"')
    )
    settings = await asyncio.wait_for(stack.enroll(files), 10)
    async with run_device(settings) as device:
        await device.watcher.wait_for(State.READY, 15)
        pipeline = device.daemon._board.audio if device.daemon._board else None
        assert pipeline is not None and pipeline.fault is None
        assert _mode(pipeline) == (False, 8), "idle: raw frames in 80 ms blocks"

        device.daemon.press()
        session = await stack.agent.next_session(timeout=20)
        await device.watcher.wait_for(State.IN_CALL, 20)
        assert _mode(pipeline) == (True, 1), "a call: each frame at once, through the APM (HPF)"
        # Long enough to hold one whole spoken copy, wherever the call began.
        async with asyncio.timeout(40):
            while len(session.received_pcm()) < 2 * (len(speech) + len(gap)):
                await asyncio.sleep(0.1)
        device.daemon.press()
        await device.watcher.wait_for(State.READY, 15)
        assert _mode(pipeline) == (False, 8)

    # The agent heard the sentence the ALSA capture device read, through the APM.
    peak, _ = slip_tolerant_xcorr(session.received_pcm(), _high_passed(speech), RATE)
    assert peak > 0.8, f"the agent did not hear the ALSA microphone ({peak:.2f})"
    # The agent's greeting went out through the ALSA playback device.
    played = devices.played()
    greeting, _ = slip_tolerant_xcorr(played, session.greeting_pcm, RATE)
    assert greeting > 0.5, f"the playback device lacks the agent's greeting ({greeting:.2f})"
