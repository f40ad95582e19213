"""Jitter buffer, settings of the audio table, and the supervisor's audio-fault state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.audio.jitter import JitterBuffer
from appliance.call.events import AgentJoined
from appliance.errors import AudioDeviceLostError, SettingsError
from appliance.settings import DEFAULT_BOARD_DIR, BoardSelection, load_board_profile
from appliance.state import State
from tests.appliance.test_supervisor import Harness, harness

__all__ = ["harness"]

pytestmark = pytest.mark.unit


def frame(value: int) -> np.ndarray:
    return np.full(480, value, dtype=np.int16)


def test_jitter_buffer_prefills_counts_underruns_and_never_grows() -> None:
    jitter = JitterBuffer(prefill_frames=2, max_frames=4)
    jitter.put(frame(1))
    assert not jitter.get().any(), "silence until the prefill is reached"
    jitter.put(frame(2))
    assert jitter.get()[0] == 1 and jitter.get()[0] == 2
    assert not jitter.get().any() and jitter.underruns == 1
    for value in range(10, 20):
        jitter.put(frame(value))
    assert jitter.depth == 4 and jitter.overflows == 6
    assert jitter.get()[0] == 16, "the oldest frames were dropped"


@pytest.mark.parametrize("profile", ["simulated", "usb-speakerphone", "respeaker-2mic"])
def test_shipped_board_profiles_load(profile: str) -> None:
    board = load_board_profile(BoardSelection(profile), settings_path=Path("x.toml"))
    assert board.name == profile


def test_a_bad_audio_value_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text('name = "b"\n[audio]\nbackend = "alsa"\ncapture_channel = 2\n')
    with pytest.raises(SettingsError, match=r"audio\.capture_channel") as info:
        load_board_profile(BoardSelection(str(path)), settings_path=path)
    assert str(path) in str(info.value)
    assert DEFAULT_BOARD_DIR.exists()


async def test_an_audio_fault_ends_the_call_and_holds_until_recovered(harness: Harness) -> None:
    await harness.settle()
    await harness.press()
    harness.calls[-1].emit(AgentJoined("a"))
    await harness.settle()
    assert harness.supervisor.state is State.IN_CALL
    harness.supervisor.audio_fault(AudioDeviceLostError("unplugged"))
    await harness.settle()
    assert harness.supervisor.state is State.AUDIO_FAULT
    assert harness.backend.ended[-1][1] == "audio_fault"
    await harness.press()
    assert harness.supervisor.state is State.AUDIO_FAULT, "no call without audio"
    harness.supervisor.audio_recovered()
    assert harness.supervisor.state is State.READY
