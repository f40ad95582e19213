"""A call that rings people first, on the device: RINGING after the join, the ring's own
deadline (no_answer, or the agent's join time after it), whoever answers making it a call,
the grant's ring read (and a backend that sends none), and the ring sound's cadence, which
stops the moment the state changes."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import numpy as np
import pytest

from appliance.audio.base import SAMPLE_RATE, SAMPLES_PER_FRAME, Frame
from appliance.call.events import Disconnected, PartyJoined, PartyLeft
from appliance.call.ringing import LEAD_FRAMES, RING_OFF_S, RING_ON_S, RingTone, ring_cadence
from appliance.clock import ManualClock
from appliance.errors import BackendProtocolError
from appliance.provisioning_client import CallGrant, CallRing
from appliance.provisioning_client.client import MAX_RING_S, _grant
from appliance.state import State, StateChange
from appliance.vocabulary import OnNoAnswer, PartyKind

from .test_supervisor import Harness, start_harness, stop_harness

pytestmark = pytest.mark.unit


def _ringing(ring: CallRing) -> Callable[[Harness], None]:
    def install(h: Harness) -> None:
        create = h.backend.create_call

        async def create_call(trigger: str) -> CallGrant:
            return dataclasses.replace(await create(trigger), ring=ring)

        h.backend.create_call = create_call  # type: ignore[method-assign]

    return install


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = await start_harness()  # agent_join_timeout_s=10
    yield h
    await stop_harness(h)


async def test_nobody_answering_ends_the_call_no_answer_and_the_device_is_ready(
    harness: Harness,
) -> None:
    _ringing(CallRing(20, OnNoAnswer.END))(harness)
    await harness.press()
    assert harness.supervisor.state is State.RINGING
    await harness.clock.advance(19.9)  # well past the agent's 10 s: the ring's time counts
    assert harness.supervisor.state is State.RINGING
    await harness.clock.advance(0.2)
    assert harness.supervisor.state is State.READY  # no call_failed: nobody did anything wrong
    assert harness.states == [
        State.READY,
        State.CONNECTING,
        State.RINGING,
        State.ENDING,
        State.READY,
    ]
    assert harness.backend.ended == [("c-1", "no_answer")]


async def test_after_the_ring_the_agent_has_its_join_time_and_makes_it_a_call(
    harness: Harness,
) -> None:
    _ringing(CallRing(20, OnNoAnswer.AGENT))(harness)
    await harness.press()
    await harness.clock.advance(25)  # the ring is over; the backend dispatched the agent
    assert harness.supervisor.state is State.RINGING
    harness.calls[0].emit(PartyJoined("agent-1", PartyKind.AGENT))
    await harness.settle()
    assert harness.supervisor.state is State.IN_CALL
    await harness.press()
    assert harness.backend.ended == [("c-1", "user")]

    # Nobody at all: the agent's join time after the ring, then agent_timeout as ever.
    await harness.press()
    await harness.clock.advance(29.9)
    assert harness.supervisor.state is State.RINGING
    await harness.clock.advance(0.2)
    assert harness.supervisor.state is State.CALL_FAILED
    await harness.clock.advance(2)
    assert harness.backend.ended[-1] == ("c-2", "agent_timeout")


async def test_an_operator_answering_is_the_call_and_a_press_while_ringing_hangs_up(
    harness: Harness,
) -> None:
    _ringing(CallRing(30, OnNoAnswer.END))(harness)
    await harness.press()
    call = harness.calls[0]
    call.emit(PartyJoined("operator-1a2b3c4d", PartyKind.PERSON))
    await harness.settle()
    assert harness.supervisor.state is State.IN_CALL
    await harness.clock.advance(60)  # the ring's deadline means nothing once answered
    assert harness.supervisor.state is State.IN_CALL
    call.emit(PartyLeft("operator-1a2b3c4d", PartyKind.PERSON, remaining=0))
    await harness.settle()
    assert harness.backend.ended == [("c-1", "person_left")]

    await harness.press()
    assert harness.supervisor.state is State.RINGING
    await harness.press()
    assert harness.supervisor.state is State.READY
    assert harness.backend.ended[-1] == ("c-2", "user")


async def test_a_call_without_a_ring_connects_as_before(harness: Harness) -> None:
    await harness.press()
    assert harness.supervisor.state is State.CONNECTING
    assert harness.calls[0].grant.ring is None


def _answer(**extra: Any) -> dict[str, Any]:
    return {
        "server_url": "ws://lk",
        "token": "t",
        "room": "call-c-1",
        "identity": "device-d",
        "call_id": "c-1",
        "expires_at": "2030-01-01T00:00:00Z",
        **extra,
    }


def test_the_grant_carries_the_ring_and_an_older_backend_sends_none() -> None:
    assert _grant(_answer()).ring is None
    assert _grant(_answer(ring=None)).ring is None
    ring = _grant(_answer(ring={"timeout_s": 45, "on_no_answer": "end"})).ring
    assert ring == CallRing(45.0, OnNoAnswer.END)
    # A choice newer than this device waits for whoever comes; a ring is never endless.
    newer = _grant(_answer(ring={"timeout_s": 9999, "on_no_answer": "voicemail"})).ring
    assert newer == CallRing(MAX_RING_S, OnNoAnswer.AGENT)
    for bad in ({"timeout_s": "30"}, {"timeout_s": 0}, {"timeout_s": True}, [30], "30"):
        with pytest.raises(BackendProtocolError, match="ring"):
            _grant(_answer(ring=bad))


def test_a_grant_answer_from_http_reads_the_same() -> None:
    response = httpx.Response(201, json=_answer(ring={"timeout_s": 10, "on_no_answer": "agent"}))
    assert _grant(response.json()).ring == CallRing(10.0, OnNoAnswer.AGENT)


# -- the ring sound ------------------------------------------------------------------------------


class TapSpeaker:
    """Records each frame written and when (the manual clock's time)."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.frames: list[tuple[float, Frame]] = []

    async def write(self, frame: Frame) -> None:
        self.frames.append((self.clock.monotonic(), frame.copy()))

    async def aclose(self) -> None:
        pass


def _rms(frame: Frame) -> float:
    return float(np.sqrt(np.mean(frame.astype(np.float64) ** 2)))


def test_the_cadence_is_the_two_tones_for_a_second_then_two_seconds_of_silence() -> None:
    pcm = ring_cadence()
    assert len(pcm) == round(SAMPLE_RATE * (RING_ON_S + RING_OFF_S))
    assert len(pcm) % SAMPLES_PER_FRAME == 0
    on, off = pcm[:SAMPLE_RATE], pcm[SAMPLE_RATE:]
    spectrum = np.abs(np.fft.rfft(on.astype(np.float64)))
    peaks = sorted(np.argsort(spectrum)[-2:])
    assert [round(p * SAMPLE_RATE / len(on)) for p in peaks] == [440, 480]
    assert not off.any()
    assert np.abs(pcm).max() < 32767 * 0.25  # headroom: it never clips


async def test_the_ring_plays_in_real_time_while_ringing_and_stops_at_once() -> None:
    clock = ManualClock()
    speaker = TapSpeaker(clock)
    tone = RingTone(speaker, clock=clock)
    try:
        tone(StateChange(State.CONNECTING, State.RINGING))
        async with asyncio.timeout(10):
            await clock.advance(6.0)  # two whole periods
        frames = speaker.frames
        # 10 ms a frame, paced by the clock (two frames ahead at the start).
        assert len(frames) == 600 + LEAD_FRAMES + 1  # frames due by 6.0 s, and the lead
        assert frames[-1][0] - frames[0][0] == pytest.approx(6.0)
        assert len({t for t, _ in frames[: LEAD_FRAMES + 1]}) == 1  # the lead at once
        levels = [_rms(f) for _, f in frames]
        assert min(levels[5:95]) > 1000  # the bell
        assert max(levels[105:295]) == 0  # its silence
        assert min(levels[305:395]) > 1000  # and again
        tone(StateChange(State.RINGING, State.RINGING, reason="muted"))  # still ringing
        assert tone.playing
        # Someone answered: not one frame more.
        tone(StateChange(State.RINGING, State.IN_CALL))
        written = len(speaker.frames)
        async with asyncio.timeout(10):
            await clock.advance(3.0)
        assert len(speaker.frames) == written
        assert not tone.playing
    finally:
        async with asyncio.timeout(5):
            await tone.aclose()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "ring-tone"]
    tone(StateChange(State.READY, State.RINGING))  # after closing: nothing starts
    assert not tone.playing


async def test_a_connection_lost_while_ringing_rejoins_and_rings_on_to_its_own_deadline(
    harness: Harness,
) -> None:
    _ringing(CallRing(40, OnNoAnswer.END))(harness)
    await harness.press()
    await harness.clock.advance(10)
    harness.calls[0].emit(Disconnected(room_closed=False, detail="gone"))
    await harness.settle()
    await harness.clock.advance(1)
    assert harness.backend.rejoins[:1] == ["c-1"]
    assert harness.supervisor.state is State.RINGING  # back in the room, still unanswered
    # Long past the agent's 10 s join time after a rejoin: the ring's deadline decides.
    await harness.clock.advance(28.5)
    assert harness.supervisor.state is State.RINGING
    await harness.clock.advance(1)
    assert harness.supervisor.state is State.READY
    assert harness.backend.ended == [("c-1", "no_answer")]


async def _with_tone(harness: Harness) -> tuple[RingTone, TapSpeaker]:
    speaker = TapSpeaker(harness.clock)
    tone = RingTone(speaker, clock=harness.clock)
    harness.supervisor.add_observer(tone)
    return tone, speaker


async def test_operators_being_rung_ring_on_the_speaker_also_after_a_rejoin(
    harness: Harness,
) -> None:
    _ringing(CallRing(40, OnNoAnswer.END))(harness)
    tone, speaker = await _with_tone(harness)
    try:
        await harness.press()
        await harness.clock.advance(2)
        assert tone.playing and speaker.frames
        harness.calls[0].emit(Disconnected(room_closed=False, detail="gone"))
        await harness.settle()
        await harness.clock.advance(1)
        assert harness.supervisor.state is State.RINGING and harness.backend.rejoins == ["c-1"]
        assert tone.playing
    finally:
        async with asyncio.timeout(5):
            await tone.aclose()


async def test_a_phone_rings_with_its_own_ringback_so_the_device_adds_none(
    harness: Harness,
) -> None:
    harness.backend.provider = "click2call"
    tone, speaker = await _with_tone(harness)
    try:
        await harness.press()
        await harness.clock.advance(3)
        assert harness.supervisor.state is State.RINGING
        assert not tone.playing and speaker.frames == []  # two ringbacks at once, else
        harness.calls[0].emit(Disconnected(room_closed=False, detail="gone"))
        await harness.settle()
        await harness.clock.advance(1)
        assert harness.supervisor.state is State.RINGING and harness.backend.rejoins == ["c-1"]
        await harness.clock.advance(3)
        assert not tone.playing and speaker.frames == []
        # A change within the phone's ringing (a mute) does not start ours either.
        tone(StateChange(State.RINGING, State.RINGING, reason="muted"))
        assert not tone.playing
    finally:
        async with asyncio.timeout(5):
            await tone.aclose()
