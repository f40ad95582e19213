"""Keeping in touch with the backend while idle: heartbeat, a held call grant, faults and backoff.

One task. While the backend is healthy it checks in every `heartbeat_s` (±10 %),
and keeps a call grant in hand, renewed before it expires, so a press goes straight
to LiveKit. A failure is reported at once (the supervisor shows it) and the next
check-in backs off (1 s doubling to 60 s, ±20 %, never before a Retry-After). It
pauses during calls; after a call the supervisor wakes it, so a revocation shows at
once and a fresh grant is fetched.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from appliance.aio import cancel_and_wait
from appliance.backoff import Backoff
from appliance.clock import Clock
from appliance.errors import (
    AwaitingApprovalError,
    BackendError,
    CredentialsRejectedError,
    RateLimitedError,
    ServiceError,
)
from appliance.provisioning_client import CallGrant, DeviceInfo, StatusReport

logger = logging.getLogger(__name__)

# A held grant is used for a press only with at least this long left to join with.
MIN_GRANT_LEFT_S = 30.0
# A held grant is renewed once less than this share of its lifetime is left.
RENEW_AT_LEFT = 0.2
HEARTBEAT_JITTER = 0.1
# A device waiting for approval asks this often at most, so it is ready soon after.
APPROVAL_POLL_S = 10.0


class Backend(Protocol):
    """What the device needs from the provisioning client."""

    async def check_in(self, report: StatusReport | None = None) -> DeviceInfo: ...

    async def create_call(self, trigger: str) -> CallGrant: ...

    async def hold_grant(self) -> CallGrant: ...

    async def rejoin_call(self, call_id: str, trigger: str) -> CallGrant: ...

    async def report_progress(self, call_id: str, event: str) -> None: ...

    @property
    def clock_offset_s(self) -> float | None: ...


class BackendKeeper:
    """The idle device's connection to the backend; owned by the supervisor."""

    def __init__(
        self,
        backend: Backend,
        *,
        clock: Clock,
        backoff: Backoff,
        heartbeat_s: float,
        hold_grant: bool,
        is_idle: Callable[[], bool],
        on_fault: Callable[[BackendError], None],
        on_healthy: Callable[[], None],
        report: Callable[[], StatusReport] = StatusReport,
        on_settings: Callable[[Mapping[str, Any]], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._backoff = backoff
        self._heartbeat_s = heartbeat_s
        self._hold_grant = hold_grant
        self._is_idle = is_idle
        self._on_fault = on_fault
        self._on_healthy = on_healthy
        self._report = report
        self._on_settings = on_settings
        self._rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._fault: BackendError | None = None
        self._reported = False
        self._grant: CallGrant | None = None
        # The backend says at each check-in whether this device's calls may be held (not on
        # a hosted platform, which opens a session per token): else fetched on the press.
        self._grants_allowed = True
        self._grant_lifetime_s = 0.0
        self.grants_fetched = 0

    @property
    def fault(self) -> BackendError | None:
        """The backend's last failure, until a check-in succeeds."""
        return self._fault

    def start(self) -> None:
        """Check in now, then keep in touch until `aclose`."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="backend-keeper")

    async def aclose(self) -> None:
        """Stop keeping in touch."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    def wake(self) -> None:
        """Check in now (after a call, or when something suggests the backend is back)."""
        self._wake.set()

    async def check_in_now(self) -> None:
        """Check in at once, outside the heartbeat (only while its task waits for a call)."""
        await self._keep_in_touch()

    def succeeded(self) -> None:
        """A request elsewhere got its answer: the backend is healthy."""
        if self._fault is not None:
            self._fault = None
            self._backoff.reset()

    def report(self, exc: BackendError) -> None:
        """A request elsewhere failed: show the fault and back off from now."""
        self._set_fault(exc)
        self._reported = True
        self.wake()

    def take_grant(self) -> CallGrant | None:
        """The held grant, if it still has time to be used; it is given away once."""
        grant, self._grant = self._grant, None
        if grant is None or self._left_s(grant) < self._min_left_s():
            return None
        return grant

    def _min_left_s(self) -> float:
        # A short-lived token (the backend allows 60 s) keeps a quarter of its life to join.
        return min(MIN_GRANT_LEFT_S, 0.25 * self._grant_lifetime_s)

    def _renew_at_left_s(self) -> float:
        # Renewed while it is still usable: never a stretch where a press must fetch.
        return max(RENEW_AT_LEFT * self._grant_lifetime_s, 2 * self._min_left_s())

    def _left_s(self, grant: CallGrant) -> float:
        # Both ends of the token's life are the backend's clock: compare in its time.
        offset = self._backend.clock_offset_s or 0.0
        return grant.expires_at.timestamp() - (self._clock.time() + offset)

    def _grant_due(self) -> bool:
        if not self._hold_grant or not self._grants_allowed:
            return False
        grant = self._grant
        return grant is None or self._left_s(grant) < self._renew_at_left_s()

    def _next_wait(self) -> float:
        if self._fault is not None:
            floor = 0.0
            if isinstance(self._fault, RateLimitedError) and self._fault.retry_after_s:
                floor = self._fault.retry_after_s
            delay = self._backoff.next_delay(floor)
            if isinstance(self._fault, AwaitingApprovalError):
                return min(delay, APPROVAL_POLL_S)
            return delay
        waits = []
        if self._heartbeat_s > 0:
            jitter = self._rng.uniform(-HEARTBEAT_JITTER, HEARTBEAT_JITTER)
            waits.append(self._heartbeat_s * (1 + jitter))
        if self._hold_grant and self._grant is not None:
            renew_in = self._left_s(self._grant) - self._renew_at_left_s()
            waits.append(max(1.0, renew_in))
        return min(waits) if waits else 3600.0

    async def _run(self) -> None:
        delay = 0.0
        while True:
            if delay > 0:
                if self._fault is not None:
                    logger.info("checking in again in %.1f s", delay)
                await self._sleep_or_wake(delay)
            if self._reported:
                # A request elsewhere failed: back off from now rather than ask again at once.
                self._reported = False
                delay = self._next_wait()
                continue
            if not self._is_idle():
                # A call is on: it needs no heartbeat. Wait to be woken when it ends.
                await self._wake.wait()
                self._wake.clear()
                delay = 0.0
                continue
            await self._keep_in_touch()
            delay = self._next_wait()

    async def _keep_in_touch(self) -> None:
        try:
            info = await self._backend.check_in(self._report())
            if self._on_settings is not None:
                self._on_settings(info.settings)
            self._grants_allowed = info.hold_grants
            if not info.hold_grants:
                self._grant = None
            if self._grant_due() and self._is_idle():
                fetched_at = self._clock.time()
                grant = await self._backend.hold_grant()
                self.grants_fetched += 1
                self._grant = grant
                offset = self._backend.clock_offset_s or 0.0
                self._grant_lifetime_s = grant.expires_at.timestamp() - (fetched_at + offset)
        except BackendError as exc:
            self._set_fault(exc)
            return
        if isinstance(self._fault, ServiceError):
            # The backend answers, but only a call shows whether the platform behind it does:
            # its fault stays on show until a call gets through (`succeeded`); a press retries.
            return
        if self._fault is not None:
            logger.info("the backend is back")
        self._fault = None
        self._backoff.reset()
        self._on_healthy()

    def _set_fault(self, exc: BackendError) -> None:
        self._fault = exc
        if isinstance(exc, CredentialsRejectedError | AwaitingApprovalError):
            # Revoked or unknown: its token is worthless. A backend that is merely down
            # leaves the grant usable, so a press still makes a call (reported later).
            self._grant = None
        self._on_fault(exc)

    async def _sleep_or_wake(self, seconds: float) -> None:
        self._wake.clear()
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(sleeper, waker)
        self._wake.clear()
