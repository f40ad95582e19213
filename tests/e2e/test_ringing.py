"""A kiosk whose calls ring people first, on the real stack (LiveKit server, backend, the demo
agent, a simulated kiosk) with the fleet's webhooks to a real receiver: nobody answers, and
the agent takes the call after the ring's time, or the call ends `no_answer`."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from appliance.state import State
from appliance.status.leds import PATTERNS, SimulatedLed
from demo.signal import slip_tolerant_xcorr
from demo.stack import LocalStack
from demo.tts import synthesize
from provisioning.ringing import RingState
from tests.e2e.conftest import ended_record
from tests.e2e.ringing_fixtures import (
    RATE,
    data,
    receiver,
    ring_tone_share,
    ringing_device,
    speaker_of,
    stack,
    webhook,
)
from tests.provisioning.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.e2e
__all__ = ["receiver", "stack"]

OTHER_SENTENCE = "The weather on the coast will be windy with some rain in the afternoon."


async def test_an_unanswered_ring_falls_back_to_the_agent_after_its_timeout(
    stack: LocalStack, receiver: WebhookReceiver
) -> None:
    async with ringing_device(
        stack, None, timeout_s=6, on_no_answer="agent", agent_join_timeout_s=20
    ) as device:
        led = device.daemon.board.led
        assert isinstance(led, SimulatedLed)
        device.daemon.press()
        await device.watcher.wait_for(State.RINGING, 20)
        rang_at, ring_mark, led_mark = time.monotonic(), len(speaker_of(device)), len(led.history)

        event = await webhook(receiver, "call.ringing")
        ringing = data(event)
        call_id = ringing["call_id"]
        assert ringing["on_no_answer"] == "agent" and ringing["timeout_s"] == 6
        assert ringing["device_name"] == "kiosk-desk" and ringing["group"] == "front-desk"
        assert ringing["join_url"].startswith(f"{stack.backend.url}/operator#ticket=")
        assert "token" not in ringing  # the link is a ticket: nothing to join with on its own

        session = await stack.agent.next_session(timeout=40)  # dispatched only now
        await device.watcher.wait_for(State.IN_CALL, 30)
        rang_for = time.monotonic() - rang_at
        in_call_mark = len(speaker_of(device))
        ring = await stack.backend.core.ringing.get(call_id)
        assert ring is not None and ring.state is RingState.AGENT

        # The agent's greeting is what the kiosk plays now.
        async with asyncio.timeout(30):
            while not session.utterances:
                await asyncio.sleep(0.1)
        await asyncio.sleep(len(session.utterances[0]) / RATE + 1.5)
        speaker = speaker_of(device)
        device.daemon.press()
        await device.watcher.wait_for(State.READY, 20)
        states = [c.state for c in device.watcher.changes]

    assert 5.0 <= rang_for <= 6 + 15, f"rang for {rang_for:.1f} s"
    assert states[states.index(State.CONNECTING) :][:3] == [
        State.CONNECTING,
        State.RINGING,
        State.IN_CALL,
    ]
    # The LED played the ring flicker while ringing: its 0.05 s flashes.
    lit = [t for t, v in list(led.history)[led_mark:] if v == 1.0]
    flashes = [b - a for a, b in itertools.pairwise(lit) if b - a < 0.2]
    assert PATTERNS[State.RINGING].steps[0] == (1.0, 0.05)
    assert len(flashes) >= 10 and 0.08 <= sorted(flashes)[len(flashes) // 2] <= 0.15
    # The ring sound filled the ringing stretch; the agent's voice the call.
    ring_share = ring_tone_share(speaker[ring_mark:in_call_mark])
    assert ring_share > 0.5, f"the ring tone is {ring_share:.2f} of the ringing stretch"
    greeting, _ = slip_tolerant_xcorr(speaker[in_call_mark:], session.utterances[0], RATE)
    other = await asyncio.wait_for(synthesize(OTHER_SENTENCE), 30)
    control, _ = slip_tolerant_xcorr(speaker[in_call_mark:], other, RATE)
    assert greeting > 0.5, f"the kiosk's speaker lacks the agent ({greeting:.2f})"
    assert control < 0.3, f"an unrelated sentence matches ({control:.2f})"
    record = await ended_record(stack, call_id)
    assert record.end_reason == "user"


async def test_ringing_with_end_ends_no_answer_and_the_kiosk_is_ready_again(
    stack: LocalStack, receiver: WebhookReceiver
) -> None:
    async with ringing_device(stack, None, timeout_s=5, on_no_answer="end") as device:
        device.daemon.press()
        await device.watcher.wait_for(State.RINGING, 20)
        rang_at = time.monotonic()
        call_id = data(await webhook(receiver, "call.ringing"))["call_id"]
        await device.watcher.wait_for(State.READY, 20)
        rang_for = time.monotonic() - rang_at
        with pytest.raises(TimeoutError):
            await stack.agent.next_session(timeout=2)  # nobody dispatched the agent
        record = await ended_record(stack, call_id)
        ended = data(await webhook(receiver, "call.ended"))
        states = [c.state for c in device.watcher.changes]

    assert 4.5 <= rang_for <= 10, f"rang for {rang_for:.1f} s"
    assert states[states.index(State.RINGING) :] == [State.RINGING, State.ENDING, State.READY]
    assert record.end_reason == "no_answer"
    assert (ended["call_id"], ended["end_reason"]) == (call_id, "no_answer")
    ring = await stack.backend.core.ringing.get(call_id)
    assert ring is not None and ring.state is RingState.ENDED
    assert stack.backend.core.ringing.timers == frozenset()  # no timer left behind
