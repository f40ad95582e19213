"""Jitter buffer, pacer, settings of the audio table, and the supervisor's audio-fault state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.audio.alsa import Pacer, XrunLog
from appliance.audio.jitter import JitterBuffer
from appliance.audio.processing import AudioProcessor, ProcessingOptions
from appliance.call.events import PartyJoined
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


class FakeTime:
    """A monotonic clock that only moves when the pacer sleeps or the test says so."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_jitter_buffer_wakes_a_waiting_player_once_prefilled() -> None:
    jitter = JitterBuffer(prefill_frames=2, max_frames=4)
    assert not jitter.wait_for_audio(0.01), "nothing queued: the wait times out"
    jitter.put(frame(1))
    assert not jitter.playing and not jitter.wait_for_audio(0.01)
    jitter.put(frame(2))
    assert jitter.playing and jitter.wait_for_audio(10.0)


def test_processor_passes_idle_frames_through_and_starts_each_call_fresh() -> None:
    processor = AudioProcessor(ProcessingOptions())
    tone = (8000 * np.sin(np.arange(480) * 2 * np.pi * 1000 / 48000)).astype(np.int16)
    processor.set_active(False)
    assert processor.process_capture(tone) is tone, "idle: untouched, not even copied"
    processor.process_render(tone)
    processor.set_active(True)
    first = processor._apm
    assert first is not None
    out = [processor.process_capture(tone) for _ in range(50)]
    assert not np.array_equal(out[-1], tone), "active: the APM processed the frame"
    processor.set_active(True)
    assert processor._apm is first, "already active: the same APM goes on"
    processor.set_active(False)
    processor.set_active(True)
    assert processor._apm is not first, "a new call gets a fresh APM"
    processor.process_capture(tone)
    assert processor._delay_apm is processor._apm, "told the stream delay before its 1st frame"


def test_xruns_are_logged_at_most_every_ten_seconds_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = XrunLog("capture overrun recovered", monotonic=lambda: now[0])
    with caplog.at_level("WARNING"):
        for total in range(1, 101):  # 100 xruns, one every 0.25 s
            log.count(total)
            now[0] += 0.25
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "capture overrun recovered (1 since the last report)"
    assert len(lines) == 3 and lines[1].startswith("capture overrun recovered (40 since")
    assert [r.XRUNS for r in caplog.records] == [1, 41, 81]  # type: ignore[attr-defined]


def test_pacer_keeps_the_period_and_skips_ahead_after_a_stall() -> None:
    clock = FakeTime()
    pacer = Pacer(0.01, monotonic=clock.monotonic, sleep=clock.sleep)
    clock.now += 0.004  # the loop's own work
    pacer.wait()
    assert clock.sleeps == [pytest.approx(0.006)] and clock.now == pytest.approx(100.01)
    clock.now += 0.015  # one late period: caught up at once, the next one is on time again
    pacer.wait()
    assert len(clock.sleeps) == 1
    pacer.wait()
    assert clock.now == pytest.approx(100.03)
    clock.now += 1.0  # a stall of many periods: no burst of catch-up periods, a fresh start
    pacer.wait()
    pacer.wait()
    assert clock.sleeps[-1] == pytest.approx(0.01) and clock.now == pytest.approx(101.04)


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
    harness.calls[-1].emit(PartyJoined("a"))
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
