"""The linear pre-stage (the Kalman filter or speexdsp's MDF) and the cascade's handover, offline.

Render and capture alternate in one thread here, as the two audio threads do in a call; the
echo is a known impulse response behind a delay the stage is not told.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from appliance.audio import linear_aec
from appliance.audio.cascade import FADE_FRAMES, RAMP_FRAMES, SETTLE_FRAMES
from appliance.audio.linear_aec import (
    DEPTH,
    LinearEchoCanceller,
    LinearEchoUnavailableError,
    gcc_phat_delay,
)
from appliance.audio.measure import ratio_db
from appliance.audio.processing import AudioProcessor, ProcessingOptions
from appliance.board_profile import LinearEchoAlgorithm
from appliance.errors import SettingsError
from appliance.settings import BoardSelection, load_board_profile
from tests.appliance.audio.speech import talker

pytestmark = pytest.mark.unit
SPEEXDSP = pytest.param(
    "speexdsp",
    marks=pytest.mark.skipif(
        not linear_aec.available("speexdsp"), reason="libspeexdsp1 is not installed"
    ),
)

RATE = 48000
DELAY_MS = 130  # render to capture: the stage is never told this


def room_echo(far: np.ndarray) -> np.ndarray:
    """The far end through a decaying 60 ms impulse response, DELAY_MS late, -6 dB."""
    rng = np.random.default_rng(7)
    taps = int(0.06 * RATE)
    ir = rng.normal(0, 1, taps) * np.exp(-np.arange(taps) / (0.012 * RATE))
    ir[0] = 4.0
    ir *= 0.5 / np.sqrt(np.sum(ir**2))
    echo = np.convolve(far.astype(np.float64), ir)[: len(far)]
    return np.concatenate([np.zeros(DELAY_MS * RATE // 1000), echo])[: len(far)]


def frames(x: np.ndarray) -> list[np.ndarray]:
    return [x[i : i + 480] for i in range(0, len(x) - 479, 480)]


def test_gcc_phat_finds_the_delay_of_an_echo() -> None:
    far = talker(1.5, seed=1).astype(np.float32)
    max_lag = 4000
    captured = np.roll(far, 1234)[max_lag:]
    assert gcc_phat_delay(far[: len(captured) + max_lag], captured, RATE, max_lag) == 1234
    noise = np.random.default_rng(2).normal(0, 1000, len(captured)).astype(np.float32)
    assert gcc_phat_delay(far[: len(noise) + max_lag], noise, RATE, max_lag) is None


@pytest.mark.parametrize("adaptive", [SPEEXDSP, "kalman"])
def test_the_stage_finds_the_echo_removes_it_and_keeps_the_person(
    adaptive: LinearEchoAlgorithm,
) -> None:
    far = talker(6.0, seed=3)
    echo = room_echo(far)
    person = np.zeros(len(far))
    person[4 * RATE : 5 * RATE] = talker(1.0, seed=4).astype(np.float64) * 0.5
    mic = np.clip(echo + person, -32768, 32767).astype(np.int16)
    stage = LinearEchoCanceller(filter_ms=100, rate=24000, adaptive=adaptive)
    out, plain = [], []
    for played, heard in zip(frames(far), frames(mic), strict=True):
        stage.render(played)
        cleaned, unprocessed = stage.capture(heard)
        out.append(cleaned)
        plain.append(unprocessed)
    cleaned_all = np.concatenate(out)
    lag = 96  # the band-limiting filters' delay at 24 kHz
    # The unprocessed stream (the plain APM's input) is the capture, delayed exactly as much.
    assert np.array_equal(np.concatenate(plain)[lag:], mic[: len(cleaned_all) - lag])
    out_aligned = cleaned_all[lag:].astype(np.float64)
    mic_aligned = mic[: len(out_aligned)].astype(np.float64)

    assert stage.locks == 1 and stage.locked_at[0] < 100, "locked once, within a second"
    assert stage.delay_ms is not None
    # Echo alone, after convergence: most of it is gone.
    assert ratio_db(mic_aligned[2 * RATE : 4 * RATE], out_aligned[2 * RATE : 4 * RATE]) > 12
    # The person over the echo: what comes out is the person, neither cut nor lifted.
    during = slice(int(4.1 * RATE), 5 * RATE)
    residual_db = ratio_db(person[during], out_aligned[during] - person[during])
    assert residual_db > 8, "the echo under the person was removed too"
    assert abs(ratio_db(person[during], out_aligned[during])) < 1.0


def test_a_processor_with_the_linear_stage_hands_over_to_the_cascade() -> None:
    far = talker(5.0, seed=5)
    mic = np.clip(room_echo(far), -32768, 32767).astype(np.int16)
    processor = AudioProcessor(ProcessingOptions(auto_gain_control=False, linear_filter_ms=100))
    processor.set_active(True)
    cascade = processor.cascade
    assert cascade is not None and len(cascade.apms) == 2, "the call starts on the plain APM"
    processor.set_stream_delay_ms(60)
    out, depths = [], []
    for played, heard in zip(frames(far), frames(mic), strict=True):
        processor.process_render(played)
        out.append(processor.process_capture(heard))
        depths.append(cascade.linear.depth)
    assert cascade.handed_over_at is not None and len(cascade.apms) == 1
    # The linear stage's share of its estimate grows from none at the lock to all of it, and
    # the output is the cascade's soon after: a person interrupting the agent's first words
    # is kept (docs/audio.md, "the handover").
    locked = cascade.linear.locked_at[0]
    ramp = depths[locked : locked + RAMP_FRAMES + 1]
    assert ramp[0] == 0.0 and ramp[-1] == DEPTH
    assert all(b > a for a, b in itertools.pairwise(ramp))
    assert cascade.handed_over_at == locked + SETTLE_FRAMES + FADE_FRAMES - 1
    assert cascade.handed_over_at * 0.01 < 1.5
    tail = slice(4 * RATE, 5 * RATE - 96)
    assert ratio_db(mic[tail], np.concatenate(out)[96:][tail]) > 25
    processor.set_active(False)
    assert processor.cascade is None
    processor.set_active(True)
    assert processor.cascade is not None and processor.cascade is not cascade


def test_without_libspeexdsp_only_speexdsps_filter_gives_way() -> None:
    missing = LinearEchoUnavailableError("the linear echo filter needs libspeexdsp1")
    with mock.patch.object(linear_aec, "_load", side_effect=missing):
        speex = AudioProcessor(ProcessingOptions(linear_filter_ms=250, linear_algorithm="speexdsp"))
        kalman = AudioProcessor(ProcessingOptions(linear_filter_ms=250))
        assert kalman.options.linear_algorithm == "kalman"
        kalman.set_active(True)
        speex.set_active(True)
    # speexdsp's filter asked for and missing: the APM runs alone, and still cancels echo.
    assert speex.options.linear_filter_ms == 0 and speex.cascade is None
    assert speex.active
    # The Kalman filter (the default) is numpy only: its stage runs all the same.
    assert kalman.cascade is not None


def test_the_shipped_software_aec_board_runs_the_kalman_filter() -> None:
    board = load_board_profile(BoardSelection("respeaker-2mic"), settings_path=Path("b.toml"))
    audio = board.audio
    assert audio.linear_echo_filter_ms == 250 and audio.linear_echo_algorithm == "kalman"


def test_the_filter_length_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text('name = "b"\n[audio]\nbackend = "alsa"\nlinear_echo_filter_ms = 20\n')
    with pytest.raises(SettingsError, match=r"audio\.linear_echo_filter_ms"):
        load_board_profile(BoardSelection(str(path)), settings_path=path)
