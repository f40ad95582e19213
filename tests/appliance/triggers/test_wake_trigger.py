"""When the wake word listens: only where it would start a call, or hang one up if asked."""

from __future__ import annotations

import pytest

from appliance.state import State, StateChange
from appliance.triggers.wake.trigger import should_listen

pytestmark = pytest.mark.unit

STARTS_A_CALL = {
    State.READY,
    State.BACKEND_UNREACHABLE,
    State.CREDENTIALS_REJECTED,
    State.RATE_LIMITED,
    State.CALL_FAILED,
    State.TOKEN_REJECTED,
    # A hosted platform's faults: a trigger retries the call.
    State.SERVICE_MISCONFIGURED,
    State.SERVICE_OUT_OF_CREDIT,
    State.SERVICE_UNAVAILABLE,
}


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("hangup_word", [False, True])
def test_the_wake_word_listens_only_where_it_has_a_job(state: State, hangup_word: bool) -> None:
    change = StateChange(previous=State.STARTING, state=state)
    in_call = state in (State.CONNECTING, State.RINGING, State.IN_CALL, State.REJOINING)
    expected = state in STARTS_A_CALL or (hangup_word and in_call)
    assert should_listen(change, hangup_word=hangup_word) is expected


@pytest.mark.parametrize("state", [State.READY, State.IN_CALL])
def test_a_muted_device_never_listens(state: State) -> None:
    change = StateChange(previous=State.STARTING, state=state, muted=True)
    assert should_listen(change, hangup_word=True) is False
