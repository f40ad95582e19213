"""Calls that survive: held grants, heartbeat, token refusal and rejoin, on fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from appliance.call.events import (
    Disconnected,
    PartyJoined,
    PartyLeft,
    Reconnected,
    Reconnecting,
)
from appliance.call.run import AGENT_RETURN_GRACE_S, ALIVE_EVERY_S, SDK_RESUME_GRACE_S
from appliance.errors import (
    BackendRefusedError,
    BackendUnreachableError,
    CallError,
    CredentialsRejectedError,
    TokenRefusedError,
)
from appliance.state import State

from .test_supervisor import Harness, start_harness, stop_harness

pytestmark = pytest.mark.unit


@pytest.fixture
async def held() -> AsyncIterator[Harness]:
    """A device that holds a grant and checks in every 60 s."""
    h = await start_harness(hold_grant=True, heartbeat_s=60.0)
    yield h
    await stop_harness(h)


async def in_call(h: Harness) -> None:
    await h.press()
    h.calls[-1].emit(PartyJoined("agent-1"))
    await h.settle()
    assert h.supervisor.state is State.IN_CALL


# Held grants and the heartbeat


async def test_a_held_grant_makes_the_press_skip_the_backend(held: Harness) -> None:
    assert held.backend.held == 1  # fetched at check-in
    await in_call(held)
    assert held.backend.created == 0  # no round trip on the press
    assert held.calls[0].grant.call_id == "g-1"
    assert held.records.started == [("g-1", "button", True)]
    await held.press()
    assert held.backend.ended == [("g-1", "user")]
    # After the call: a check-in at once (is the device still welcome?) and a new grant.
    assert held.backend.held == 2
    assert held.supervisor.state is State.READY


async def test_the_held_grant_is_renewed_before_it_expires(held: Harness) -> None:
    held.backend.grant_ttl_s = 600
    start = held.clock.monotonic()
    await held.clock.advance(600 * 0.8 + 10)
    # Renewed at 80 % of its life, on top of the heartbeat's check-ins.
    assert held.backend.held == 2
    await held.clock.advance(3600)
    renewals = held.backend.held - 1
    assert 7 <= renewals <= 9, renewals  # one per 480 s over 4,080 s
    assert len(held.backend.check_in_times) >= (held.clock.monotonic() - start) / 66


async def test_an_expired_or_missing_grant_falls_back_to_fetch_on_press(held: Harness) -> None:
    held.backend.grants = [BackendUnreachableError("down")] * 3
    held.backend.grant_ttl_s = 20  # too short to use
    held.supervisor.keeper.take_grant()
    await held.press()
    assert held.backend.created == 1
    assert held.calls[0].grant.call_id == "c-1"
    held.calls[0].emit(PartyJoined("agent-1"))
    await held.settle()
    assert held.records.started == [("c-1", "button", False)]


async def test_the_heartbeat_shows_an_outage_before_anyone_presses(held: Harness) -> None:
    held.backend.check_ins = [BackendUnreachableError("down")] * 3
    waited = 0
    while held.supervisor.state is State.READY:
        await held.clock.advance(1)
        waited += 1
    # The next heartbeat, 60 s ±10 % after the last, found the outage.
    assert 54 <= waited <= 67, waited
    assert held.supervisor.state is State.BACKEND_UNREACHABLE
    # Back off 1, 2, 4 s, then back.
    await held.clock.advance(6)
    assert held.supervisor.state is State.BACKEND_UNREACHABLE
    await held.clock.advance(2)
    assert held.supervisor.state is State.READY
    assert held.records.backend_back_count >= 1


async def test_a_press_during_an_outage_still_calls_with_the_held_grant(held: Harness) -> None:
    held.backend.check_ins = [BackendUnreachableError("down")] * 50
    await held.clock.advance(66)
    assert held.supervisor.state is State.BACKEND_UNREACHABLE
    await in_call(held)
    assert held.backend.created == 0
    assert held.records.started == [("g-1", "button", True)]


# LiveKit refusing the token


async def test_a_refused_token_is_replaced_within_the_same_press(held: Harness) -> None:
    held.connect_errors = [TokenRefusedError("401 expired")]
    await held.press()
    assert [c.grant.call_id for c in held.calls] == ["g-1", "c-1"]
    held.calls[-1].emit(PartyJoined("agent-1"))
    await held.settle()
    assert held.supervisor.state is State.IN_CALL
    # The held grant never became a call: nothing to report for it.
    assert held.records.started == [("c-1", "button", False)]
    assert held.backend.ended == []


async def test_a_second_refusal_is_its_own_fault_not_call_failed(held: Harness) -> None:
    held.connect_errors = [TokenRefusedError("401"), TokenRefusedError("401")]
    await held.press()
    assert held.supervisor.state is State.TOKEN_REJECTED
    assert State.CALL_FAILED not in held.states
    assert held.backend.ended == [("c-1", "token_refused")]
    # A later call that connects clears it.
    await in_call(held)


# Rejoin


async def test_the_sdk_resuming_keeps_the_call_and_shows_rejoining(held: Harness) -> None:
    await in_call(held)
    call = held.calls[0]
    call.emit(Reconnecting())
    call.emit(PartyLeft("agent-1"))  # the SDK drops everyone while it reconnects
    await held.settle()
    assert held.supervisor.state is State.REJOINING
    call.emit(Reconnected(party_present=True))
    await held.settle()
    assert held.supervisor.state is State.IN_CALL
    assert held.backend.ended == []


async def test_a_room_made_again_without_its_agent_asks_for_the_agent(held: Harness) -> None:
    await in_call(held)
    call = held.calls[0]
    call.emit(Reconnecting())
    call.emit(Reconnected(party_present=False))
    await held.settle()
    assert held.supervisor.state is State.REJOINING
    await held.clock.advance(AGENT_RETURN_GRACE_S + 0.1)
    assert held.backend.rejoins == ["g-1"]  # the backend dispatches the agent again
    call.emit(PartyJoined("agent-2"))
    await held.settle()
    assert held.supervisor.state is State.IN_CALL
    assert held.backend.ended == []


async def test_when_the_sdk_gives_up_the_device_rejoins_the_same_room(held: Harness) -> None:
    await in_call(held)
    held.calls[0].emit(Disconnected(room_closed=False, detail="SIGNAL_CLOSE"))
    held.backend.rejoin_errors = [BackendUnreachableError("down")]
    held.connect_errors = [CallError("server still down")]
    await held.settle()
    assert held.supervisor.state is State.REJOINING
    await held.clock.advance(5)
    assert len(held.calls) == 3  # first, a failed join, then the one that worked
    assert held.calls[-1].grant.room == "call-g-1"
    held.calls[-1].emit(PartyJoined("agent-1"))
    await held.settle()
    assert held.supervisor.state is State.IN_CALL
    assert held.calls[0].closed and held.calls[1].closed
    # The replaced call's late events are ignored.
    held.calls[0].emit(PartyLeft("agent-1"))
    await held.settle()
    assert held.supervisor.state is State.IN_CALL


async def test_a_sdk_that_does_not_resume_is_taken_over(held: Harness) -> None:
    await in_call(held)
    held.calls[0].emit(Reconnecting())
    await held.settle()
    await held.clock.advance(SDK_RESUME_GRACE_S + 0.1)
    assert held.backend.rejoins == ["g-1"]
    assert len(held.calls) == 2


async def test_the_rejoin_window_ends_the_call_as_connection_lost() -> None:
    h = await start_harness(hold_grant=True, heartbeat_s=60.0, rejoin_window_s=12)
    try:
        await in_call(h)
        h.backend.rejoin_errors = [BackendUnreachableError("down")] * 100
        h.calls[0].emit(Disconnected(room_closed=False, detail="SIGNAL_CLOSE"))
        await h.settle()
        await h.clock.advance(11)
        assert h.supervisor.state is State.REJOINING
        await h.clock.advance(2)
        assert h.backend.ended == [("g-1", "connection_lost")]
        assert "agent_left" not in [reason for _, reason in h.backend.ended]
    finally:
        await stop_harness(h)


async def test_a_rejoin_the_backend_refuses_ends_the_call(held: Harness) -> None:
    await in_call(held)
    held.backend.rejoin_errors = [BackendRefusedError(409, "call_ended", "ended")]
    held.calls[0].emit(Disconnected(room_closed=False, detail="SIGNAL_CLOSE"))
    await held.settle()
    assert held.backend.ended == [("g-1", "room_closed")]


async def test_revocation_ends_the_call_and_shows_credentials_rejected_at_once(
    held: Harness,
) -> None:
    await in_call(held)
    held.backend.check_ins = [CredentialsRejectedError(403, "device_revoked", "revoked")] * 10
    held.calls[0].emit(Disconnected(room_closed=True, detail="ROOM_DELETED"))
    await held.settle()
    assert held.backend.ended == [("g-1", "room_closed")]
    assert held.supervisor.state is State.CREDENTIALS_REJECTED
    assert State.READY not in held.states[held.states.index(State.ENDING) :]
    # Its held grant is worthless now: a press fetches (and is refused).
    held.backend.calls = [CredentialsRejectedError(403, "device_revoked", "revoked")]
    await held.press()
    assert held.supervisor.state is State.CREDENTIALS_REJECTED
    assert len(held.calls) == 1


async def test_a_long_call_tells_its_records_it_is_alive(held: Harness) -> None:
    await in_call(held)
    await held.clock.advance(ALIVE_EVERY_S * 3 + 1)
    assert held.records.alive == 3


async def test_a_rejoin_that_lands_late_in_the_window_gives_the_agent_its_join_time() -> None:
    h = await start_harness(hold_grant=True, heartbeat_s=60.0, rejoin_window_s=5)
    try:
        await in_call(h)
        # Three failures: back at 0.5 + 1 + 2 s (±20 % each), at most 4.2 s, inside the window.
        h.backend.rejoin_errors = [BackendUnreachableError("down")] * 3
        h.calls[0].emit(Disconnected(room_closed=False, detail="SIGNAL_CLOSE"))
        await h.settle()
        waited = 0.0
        while len(h.calls) < 2:
            await h.clock.advance(0.25)
            waited += 0.25
            assert waited < 5
        assert h.supervisor.state is State.REJOINING
        await h.clock.advance(5 - waited + 3)  # past the window, within the agent's join time
        assert h.supervisor.state is State.REJOINING
        h.calls[-1].emit(PartyJoined("agent-2"))
        await h.settle()
        assert h.supervisor.state is State.IN_CALL
        assert h.backend.ended == []
    finally:
        await stop_harness(h)


async def test_a_short_lived_grant_is_renewed_while_it_is_still_usable() -> None:
    h = await start_harness(hold_grant=True, heartbeat_s=60.0)
    try:
        h.backend.grant_ttl_s = 60  # the shortest TTL the backend allows
        h.supervisor.keeper.take_grant()
        h.supervisor.keeper.wake()
        await h.settle()
        # Every moment of the next few minutes, a press would find a usable grant.
        for _ in range(180):
            await h.clock.advance(1)
            keeper = h.supervisor.keeper
            assert keeper._grant is not None
            assert keeper._left_s(keeper._grant) >= keeper._min_left_s()
        assert h.backend.held <= 2 + 180 / 30 + 1  # renewed every ~30 s, not every second
    finally:
        await stop_harness(h)
