"""Closed-loop audio benchmark: echo reduction and barge-in through a sound server, per room.

The kiosk's real ALSA pipeline, a throwaway PulseAudio daemon and a real-time room process
(tests/appliance/audio/loop). Each room runs the shipped software-AEC profile (the Kalman
filter's linear stage ahead of AEC3), the profile with speexdsp's MDF as the linear stage's
filter, AEC3 alone (the profile without the linear stage), and the same loop with the canceller
off (the baseline), with the person as loud as the echo and 6 dB quieter.
Then a soak: over 5 minutes of agent speech through the loop, the hang-up word must not fire.
Run with `scripts/bench tests/bench/bench_loop.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from appliance.audio.base import SAMPLE_RATE
from appliance.audio.room import ReverbRoom
from appliance.audio.simulated import resample
from appliance.settings import BoardAudio, BoardSelection, load_board_profile
from appliance.triggers.wake.base import ENGINE_RATE, WakeDetector
from appliance.triggers.wake.micro import MicroWakeWordEngine
from tests.appliance.audio.loop.harness import (
    REPORTED_ROOMS,
    ROOMS,
    LoopRun,
    Script,
    run_loop,
    run_steady,
)
from tests.appliance.audio.loop.pulse import PulseLoop, pulse_loop
from tests.appliance.audio.loop.talk import barge_in
from tests.appliance.triggers.speech import speak

pytestmark = pytest.mark.bench

PROFILE = "respeaker-2mic"
SECONDS, NEAR_AT = 12.0, (5.0,)
# Early barge-in: the person talks over the agent's first words (its greeting), 1.5 s into
# them, before the linear stage's handover would have been done with a slower crossover.
EARLY_NEAR_AT = (1.5,)
VARIANTS: dict[str, dict[str, object]] = {
    "profile": {},
    "speexdsp's MDF": {"linear_echo_algorithm": "speexdsp"},
    "AEC3 alone": {"linear_echo_filter_ms": 0},
    "canceller off (baseline)": {"echo_cancellation": "off"},
}
AT_MINUS_6 = ("profile", "speexdsp's MDF", "AEC3 alone")
SOAK_S = 310.0
# The agent's sentences, and between them the hang-up words said on their own (as an agent
# explaining how to hang up would): the clean speech triggers the engines, so the raw
# microphone is a control that must fire, and the published stream must not.
SOAK_SENTENCES = (
    "Thank you for calling. Your booking for two nights is confirmed.",
    "Breakfast is served from seven until ten in the dining room on the ground floor.",
    "If you want to end the call, just say the word on its own, like this.",
    "The weather on the coast will be windy with some rain in the afternoon.",
    "Parking is free for guests, and the garage closes at midnight.",
    "I can also book a table for dinner, or order a taxi to the station.",
    "The museum is open every day except Monday.",
)
HANGUP_WORDS = {"okay_nabu": "okay nabu", "alexa": "alexa"}


def _figures(run: LoopRun) -> str:
    told = sorted(set(run.delays_ms[50:]))
    quiet = ("jitter_underruns", "delay_changes")  # the agent's last frame is an underrun
    glitches = sum(v for k, v in run.glitches.items() if k not in quiet)
    real = run.canceller_delay_ms - run.room.delay_ms
    real_text = "   -  " if np.isnan(real) else f"{real:5.0f} "
    linear = (
        "       -"
        if np.isnan(run.linear_cpu_ms)
        else f"{run.linear_cpu_ms:5.2f} ms {run.handed_over_at or 0:4d}"
    )
    return (
        f"{run.erle_first_db():7.1f} {run.erle_steady_db():7.1f} {run.double_talk_loss_db():7.2f}"
        f"   {'/'.join(str(d) for d in told):>8} {real_text} {linear}  glitches "
        f"{glitches}  load {os.getloadavg()[0]:.1f}"
    )


async def _script(room: ReverbRoom, ser_db: float, near_at: tuple[float, ...] = NEAR_AT) -> Script:
    return await asyncio.wait_for(barge_in(SECONDS, near_at, room, ser_db=ser_db), 60)


async def _variant(
    loop: PulseLoop,
    where: Path,
    audio: BoardAudio,
    name: str,
    room: ReverbRoom,
    ser: float,
    script: Script,
) -> LoopRun:
    """One run of the profile's variant `name` in `room`; its figures printed."""
    changed = dataclasses.replace(audio, **VARIANTS[name])  # type: ignore[arg-type]
    run = await asyncio.wait_for(run_steady(loop, where, changed, room, script), 120)
    print(f"  {room.name:<12} {name:<24} {ser:+4.0f} {_figures(run)}", flush=True)
    return run


async def _rooms(loop: PulseLoop, workdir: Path) -> dict[tuple[str, str, float], LoopRun]:
    board = load_board_profile(BoardSelection(PROFILE), settings_path=Path("bench.toml"))
    runs: dict[tuple[str, str, float], LoopRun] = {}
    print(
        f"\nclosed loop, {PROFILE}: PulseAudio + pulse ALSA plugin, real-time room, espeak-ng"
        "\n  room         variant                  SER    first  steady  dt-loss   told-ms"
        " real-ms  linear-cpu/frame handover-frame"
    )
    for room in (*ROOMS, *REPORTED_ROOMS):
        for ser in (0.0, -6.0):
            script = await _script(room, ser)
            for name in VARIANTS if ser == 0.0 else AT_MINUS_6:
                where = workdir / f"{room.name}-{ser}-{len(runs)}"
                run = await _variant(loop, where, board.audio, name, room, ser, script)
                runs[(room.name, name, ser)] = run
    print(f"  early barge-in, the person at {EARLY_NEAR_AT[0]} s (first: up to then)")
    for room in (*ROOMS, *REPORTED_ROOMS):
        script = await _script(room, -6.0, EARLY_NEAR_AT)
        for name in AT_MINUS_6:
            where = workdir / f"{room.name}-early-{len(runs)}"
            run = await _variant(loop, where, board.audio, name, room, -6.0, script)
            runs[(room.name, f"{name}, early", -6.0)] = run
    return runs


def _wake_counts(pcm: np.ndarray) -> dict[str, int]:
    pcm16 = resample(pcm, SAMPLE_RATE, ENGINE_RATE)
    counts = {}
    for model in HANGUP_WORDS:
        detector = WakeDetector(MicroWakeWordEngine(model), refractory_s=2.0)
        counts[model] = len(detector.process(pcm16))
        detector.engine.close()
    return counts


def _soak_speech(seconds: float) -> np.ndarray:
    """The agent for `seconds`: sentences, each followed by a hang-up word said alone."""
    pause = np.zeros(int(0.4 * SAMPLE_RATE), dtype=np.int16)
    pieces, total = [], 0
    while total < seconds * SAMPLE_RATE:
        for i, sentence in enumerate(SOAK_SENTENCES):
            word = list(HANGUP_WORDS.values())[i % len(HANGUP_WORDS)]
            for piece in (
                speak(sentence, "en", 160, SAMPLE_RATE),
                pause,
                speak(word, "en", 130, SAMPLE_RATE),
                pause,
            ):
                pieces.append(piece)
                total += len(piece)
    return np.concatenate(pieces)[: int(seconds * SAMPLE_RATE)]


async def _soak(loop: PulseLoop, workdir: Path) -> tuple[dict[str, dict[str, int]], float]:
    board = load_board_profile(BoardSelection(PROFILE), settings_path=Path("bench.toml"))
    far = await asyncio.to_thread(_soak_speech, SOAK_S)
    script = Script(far=far, near=np.zeros(480, dtype=np.int16), near_at_s=())
    run = await asyncio.wait_for(
        run_loop(loop, workdir / "soak", board.audio, ROOMS[1], script, strict=False),
        SOAK_S + 120,
    )
    counts = {
        "agent's speech (clean)": _wake_counts(far),
        "raw microphone": _wake_counts(run.raw),
        "published stream": _wake_counts(run.out),
    }
    return counts, run.erle_steady_db()


async def test_closed_loop_figures(tmp_path: Path) -> None:
    with pulse_loop(tmp_path / "pulse") as loop:
        runs = await _rooms(loop, tmp_path)
        soak, soak_erle = await _soak(loop, tmp_path)
    print(
        f"  hang-up words over {SOAK_S / 60:.1f} min of agent speech, reverberant room"
        f" (steady echo reduction {soak_erle:.1f} dB):"
    )
    for name, counts in soak.items():
        print(f"    {name:<28} {counts}")
    for room in ROOMS:
        for ser in (0.0, -6.0):
            run = runs[(room.name, "profile", ser)]
            assert run.erle_steady_db() >= 30
            assert run.erle_first_db() >= 25
            assert run.double_talk_loss_db() <= 3
        assert runs[(room.name, "profile, early", -6.0)].double_talk_loss_db() <= 3
    assert sum(soak["raw microphone"].values()) > 0, "the control: the engines hear the agent"
    assert soak["published stream"] == dict.fromkeys(HANGUP_WORDS, 0)
