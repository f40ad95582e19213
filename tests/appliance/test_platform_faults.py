"""A hosted platform's failures, as the device tells them apart: the client's mapping of the
backend's refusals, the supervisor's state, its LED code and journal ERROR_CODE; a platform's
device fetches its grant on the press."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from appliance.errors import (
    BackendError,
    BackendUnreachableError,
    CredentialsRejectedError,
    RateLimitedError,
    ServiceMisconfiguredError,
    ServiceOutOfCreditError,
    ServiceUnavailableError,
)
from appliance.provisioning_client import DeviceInfo, DeviceKey, ProvisioningClient
from appliance.service.codes import code_for_state
from appliance.state import State
from appliance.status.leds import LEAD_ON_S, PATTERNS
from tests.appliance.test_supervisor import FakeBackend, Harness, start_harness, stop_harness

pytestmark = pytest.mark.unit

# (our backend's answer, the device's error)
REFUSALS = [
    (502, "upstream_key_rejected", ServiceMisconfiguredError),
    (502, "upstream_bad_request", ServiceMisconfiguredError),
    (500, "provider_misconfigured", ServiceMisconfiguredError),
    (502, "upstream_out_of_credit", ServiceOutOfCreditError),
    (503, "upstream_unavailable", ServiceUnavailableError),
    (429, "upstream_rate_limited", RateLimitedError),
    # The device's own problems keep their meaning.
    (401, "bad_signature", CredentialsRejectedError),
    (403, "device_revoked", CredentialsRejectedError),
    (503, "storage_unavailable", BackendUnreachableError),
    (502, "bad_gateway_from_a_proxy", BackendUnreachableError),
]


@pytest.mark.parametrize(("status", "code", "error"), REFUSALS)
async def test_the_client_tells_the_platform_from_the_backend(
    tmp_path: Path, status: int, code: str, error: type[BackendError]
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status, json={"error": code, "message": "no"}, headers={"Retry-After": "17"}
        )

    key = DeviceKey.load_or_create(tmp_path)
    transport = httpx.MockTransport(answer)
    async with ProvisioningClient("http://backend", key, device_id="d-x", transport=transport) as c:
        with pytest.raises(BackendError) as raised:
            await asyncio.wait_for(c.create_call("button"), 5)
    assert type(raised.value) is error
    if error is RateLimitedError:
        assert isinstance(raised.value, RateLimitedError)
        assert raised.value.retry_after_s == 17.0


async def test_the_check_in_says_whether_grants_are_held(tmp_path: Path) -> None:
    body = {
        "device_id": "d-x",
        "name": "kiosk",
        "status": "approved",
        "agent_name": "a",
        "settings": {},
        "call_provider": {"kind": "hmsvoicedock", "hold_grants": False},
    }
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    key = DeviceKey.load_or_create(tmp_path)
    async with ProvisioningClient("http://backend", key, device_id="d-x", transport=transport) as c:
        info = await asyncio.wait_for(c.check_in(), 5)
    assert (info.provider, info.hold_grants) == ("hmsvoicedock", False)


FAULTS = [
    (ServiceMisconfiguredError(502, "upstream_key_rejected", "no"), State.SERVICE_MISCONFIGURED),
    (ServiceOutOfCreditError(502, "upstream_out_of_credit", "no"), State.SERVICE_OUT_OF_CREDIT),
    (ServiceUnavailableError(503, "upstream_unavailable", "no"), State.SERVICE_UNAVAILABLE),
]


@pytest.mark.parametrize(("error", "state"), FAULTS, ids=lambda v: str(v)[:30])
async def test_a_platform_fault_shows_until_a_call_gets_through(
    error: BackendError, state: State, caplog: pytest.LogCaptureFixture
) -> None:
    h: Harness = await start_harness()
    try:
        with caplog.at_level(logging.INFO, logger="appliance.supervisor"):
            h.backend.calls = [error]
            await h.press()
            assert h.supervisor.state is state
            # The backend answers its check-ins, but that says nothing about the platform.
            await h.clock.advance(30)
            assert h.backend.check_in_times  # it did check in
            assert h.supervisor.state is state
        lines = [r for r in caplog.records if getattr(r, "STATE", None) == state.value]
        code = code_for_state(state)
        assert code is not None and code.value.startswith("E9")
        assert lines and all(getattr(r, "ERROR_CODE", None) == code.value for r in lines)
        # A press retries, and a call that gets its token clears the fault.
        await h.press()
        assert h.supervisor.state is State.CONNECTING
    finally:
        await stop_harness(h)


async def test_the_platforms_rate_limit_is_rate_limited_with_its_retry_after() -> None:
    h: Harness = await start_harness()
    try:
        h.backend.calls = [RateLimitedError(17.0, "the platform is busy")]
        await h.press()
        assert h.supervisor.state is State.RATE_LIMITED
        await h.clock.advance(16)
        assert h.supervisor.state is State.RATE_LIMITED
        await h.clock.advance(2)
        assert h.supervisor.state is State.READY
    finally:
        await stop_harness(h)


@pytest.mark.parametrize("state", [s for _, s in FAULTS])
def test_each_platform_fault_has_a_long_blink_then_its_count(state: State) -> None:
    pattern = PATTERNS[state]
    code = code_for_state(state)
    assert code is not None and pattern.lead
    assert pattern.steps[0] == (1.0, LEAD_ON_S)
    short = [s for s in pattern.steps[1:] if s[0] == 1.0]
    assert len(short) == pattern.blinks == int(code.value[2])


class PlatformBackend(FakeBackend):
    """A backend whose check-in says the device's calls are on a platform."""

    async def check_in(self, report: object = None) -> DeviceInfo:
        info = await super().check_in()
        return DeviceInfo(
            info.device_id,
            info.name,
            info.status,
            info.agent_name,
            provider="call2me",
            hold_grants=False,
        )


async def test_a_platforms_device_fetches_on_the_press_instead_of_holding() -> None:
    h: Harness = await start_harness(hold_grant=True, heartbeat_s=60)
    try:
        await h.clock.advance(1)
        assert h.backend.held == 1  # the fleet's own LiveKit: a grant is held
        h.backend.__class__ = PlatformBackend  # the backend now answers for a platform
        h.supervisor.keeper.wake()
        await h.clock.advance(1)
        await h.press()
        assert h.backend.created == 1  # fetched on the press, the held one dropped
        await h.clock.advance(600)
        assert h.backend.held == 1  # and no grant held since
    finally:
        await stop_harness(h)
