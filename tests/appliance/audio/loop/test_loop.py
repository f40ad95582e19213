"""Barge-in in a closed loop, in real time: the shipped profiles through a sound server and a room.

The kiosk's own ALSA pipeline plays the agent into a throwaway PulseAudio daemon; a room
process hears it, adds reverberation and a person talking over the agent, and the kiosk
captures that. What the pipeline hands to a call is measured against what the room made.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.settings import DEFAULT_BOARD_DIR, BoardSelection, load_board_profile
from tests.appliance.audio.loop.harness import ROOMS, LoopRun, run_steady
from tests.appliance.audio.loop.pulse import PulseLoop, pulse_loop
from tests.appliance.audio.loop.talk import barge_in

pytestmark = pytest.mark.integration

# The person talks over the agent's first sentence, 2 s in: a profile with the linear
# pre-stage has handed the call over to its cascade by then (about 1.3 s into the agent's
# speech, docs/audio.md); before the handover AEC3 alone cut such a person by 4.9-5.9 dB.
SECONDS, NEAR_AT = 10.0, 2.0
# The targets are steady >= 30 dB, first 2 s >= 25 dB, double talk <= 3 dB; the
# cascade meets them in these rooms with 1-2 dB to spare (the lounge's first 2 s: 26-27.5 dB),
# less than a 10 s run's spread (double talk 1.3-3.2 dB at 0 dB SER in the dry room on a
# quiet machine). The benchmark (tests/bench/bench_loop.py) holds the figures against the
# targets; this suite guards the behaviour with that spread as margin, and still fails what
# the issue found: AEC3 alone with gain control (5.9-7.0 dB lost, 14-29 dB of echo removed).
STEADY_DB, FIRST_2S_DB, DOUBLE_TALK_DB = 27.0, 22.0, 4.0


def software_aec_profiles() -> list[str]:
    """Every shipped board profile whose echo is cancelled in the firmware."""
    names = []
    for path in sorted(DEFAULT_BOARD_DIR.glob("*.toml")):
        board = load_board_profile(BoardSelection(path.stem), settings_path=path)
        if board.audio.backend == "alsa" and board.audio.echo_cancellation == "software":
            names.append(path.stem)
    return names


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulseLoop]:
    with pulse_loop(tmp_path_factory.mktemp("pulse")) as running:
        yield running


async def _run(
    loop: PulseLoop,
    workdir: Path,
    profile: str,
    room_name: str,
    *,
    ser_db: float = 0.0,
    **audio: object,
) -> LoopRun:
    board = load_board_profile(BoardSelection(profile), settings_path=Path("loop.toml"))
    room = next(r for r in ROOMS if r.name == room_name)
    script = await asyncio.wait_for(barge_in(SECONDS, (NEAR_AT,), room, ser_db=ser_db), 30)
    settings = dataclasses.replace(board.audio, **audio)  # type: ignore[arg-type]
    return await asyncio.wait_for(run_steady(loop, workdir, settings, room, script), 50)


def test_a_software_aec_profile_is_shipped() -> None:
    assert "respeaker-2mic" in software_aec_profiles()


# SER: the person's level at the microphone against the agent's echo; at -6 dB the person is
# quieter than the echo, which is where AEC3 alone cut them by 3.5-4.1 dB.
@pytest.mark.parametrize("ser_db", [0.0, -6.0])
@pytest.mark.parametrize("room", [room.name for room in ROOMS])
@pytest.mark.parametrize("profile", software_aec_profiles())
async def test_the_person_is_heard_over_the_agent_and_the_echo_is_not(
    loop: PulseLoop, tmp_path: Path, profile: str, room: str, ser_db: float
) -> None:
    run = await _run(loop, tmp_path, profile, room, ser_db=ser_db)
    steady, first, loss = run.erle_steady_db(), run.erle_first_db(), run.double_talk_loss_db()
    figures = (
        f"steady {steady:.1f} dB, first 2 s {first:.1f} dB, double-talk loss {loss:.2f} dB; "
        f"linear stage locked at frame {run.linear_locked_at} ({run.linear_locks} locks), "
        f"handed over at {run.handed_over_at}; kiosk {run.glitches}; "
        f"attempts thrown away: {run.retried}"
    )

    assert steady >= STEADY_DB, f"steady-state echo reduction: {figures}"
    assert first >= FIRST_2S_DB, f"echo reduction in the first 2 s: {figures}"
    assert loss <= DOUBLE_TALK_DB, f"the person talking over the agent: {figures}"
    # The delay told to the canceller is the device's own figure, one value for the call,
    # and never more than the delay the canceller really faces (the rest it finds itself).
    told = run.delays_ms[50:]
    assert len(set(told)) == 1, f"the delay moved within the call: {sorted(set(told))}"
    assert 0 < told[0] <= run.canceller_delay_ms
    board = load_board_profile(BoardSelection(profile), settings_path=Path("loop.toml"))
    if board.audio.linear_echo_filter_ms:
        # The linear stage found the echo's delay and the call was on the cascade when the
        # person spoke (the loss above is the cascade's, not the plain APM's).
        assert run.handed_over_at is not None
        assert run.handed_over_at * 0.01 < NEAR_AT


async def test_without_echo_cancellation_the_echo_comes_back(
    loop: PulseLoop, tmp_path: Path
) -> None:
    # The baseline: the same loop and room with the canceller off shows what it removes.
    profile = software_aec_profiles()[0]
    run = await _run(loop, tmp_path, profile, "reverberant", echo_cancellation="off")

    assert run.erle_steady_db() < 6.0
    assert run.erle_first_db() < 6.0
    # With the echo left in, the person is not lost: nothing but the canceller cuts them.
    assert abs(run.double_talk_loss_db()) < 3.0
    assert np.isnan(run.canceller_delay_ms)
