"""Echo cancellation through real libasound: the speaker's sound comes back through a room."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.appliance.audio.echo_scenario import run_echo
from tests.appliance.audio.speech import far_and_near

pytestmark = pytest.mark.integration


# The microphone file is computed in advance: a run where the machine could not keep real
# time (a jitter-buffer under- or overrun, an xrun) shifts the speaker against it, and says
# nothing about the canceller. Such a run is made again; a clean run must pass.
ATTEMPTS = 5


async def test_echo_is_removed_and_the_near_end_talker_is_kept(tmp_path: Path) -> None:
    far, near = await asyncio.wait_for(far_and_near(8.0, 5.0, 7.5), 30)
    glitched = []
    for attempt in range(ATTEMPTS):
        run = await asyncio.wait_for(run_echo(tmp_path / str(attempt), far, near), 30)
        if run.clean:
            break
        glitched.append(run.glitches)
    assert run.clean, f"no run kept real time in {ATTEMPTS} ({glitched} glitches)"

    assert run.erle_db(2.0, 5.0) >= 30.0, "steady-state echo reduction"
    assert run.erle_db(0.3, 2.0) >= 20.0, "echo reduction while converging"
    assert run.near_end_loss_db(5.0, 7.5) <= 4.0, "the person talking over the agent is kept"


async def test_without_echo_cancellation_the_echo_stays(tmp_path: Path) -> None:
    import dataclasses

    from tests.appliance.audio.echo_scenario import ECHO_AUDIO

    far, near = await asyncio.wait_for(far_and_near(3.0, 5.0, 5.0), 30)
    audio = dataclasses.replace(ECHO_AUDIO, echo_cancellation="off", noise_suppression=False)
    run = await asyncio.wait_for(run_echo(tmp_path, far, near, audio=audio), 30)
    assert run.erle_db(0.5, 3.0) < 3.0
