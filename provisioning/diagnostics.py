"""Diagnostic grants: a short LiveKit token for `appliance doctor` to join and leave a room.

The room is a throwaway of its own (`diag-<device>-<random>`), never a call's: nothing is
dispatched into it, nothing is recorded about it but an audit line, and LiveKit closes it
once the doctor has left. The token can join that room and do nothing else (no publishing,
no subscribing, no data, no metadata), and lives a minute. Each device gets a few a minute,
counted in the backend process that answered.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from provisioning.config import LiveKitConfig
from provisioning.core import ProvisioningCore
from provisioning.errors import GrantsNotHeldError, RateLimitedError
from provisioning.logs import AUDIT_LOGGER
from provisioning.providers import ProviderKind
from provisioning.signing import SignedRequest
from provisioning.tokens import mint_diagnostic_token

logger = logging.getLogger(__name__)
audit = logging.getLogger(AUDIT_LOGGER)

DIAGNOSTIC_PATH = "/v1/diagnostics/livekit"
DIAGNOSTIC_ROOM_PREFIX = "diag-"
# Long enough to join from a slow link; LiveKit refreshes a joined client's token itself.
DIAGNOSTIC_TTL_S = 60
# A technician runs the doctor a few times while fixing a fault; a stolen key gets no more.
MAX_DIAGNOSTICS_PER_MINUTE = 3
RATE_WINDOW_S = 60.0
# Devices whose recent grants are remembered; the oldest is forgotten first.
DEVICES_REMEMBERED = 10_000


@dataclass(frozen=True)
class DiagnosticGrant:
    """A token for one device to join its own throwaway room; never logged."""

    server_url: str
    token: str = field(repr=False)
    room: str
    identity: str
    expires_at: int


def diagnostic_room(device_id: str) -> str:
    """A fresh room name for one diagnostic join of `device_id`."""
    return f"{DIAGNOSTIC_ROOM_PREFIX}{device_id}-{secrets.token_hex(4)}"


class PerDeviceLimit:
    """At most `limit` admissions per device in any `window_s`, counted in memory."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        clock: Callable[[], float] = time.time,
        remembered: int = DEVICES_REMEMBERED,
    ) -> None:
        self._limit = limit
        self._window_s = window_s
        self._clock = clock
        self._remembered = remembered
        self._times: OrderedDict[str, deque[float]] = OrderedDict()

    def admit(self, device_id: str) -> int | None:
        """None if admitted (and counted), else the whole seconds until it would be."""
        now = self._clock()
        times = self._times.pop(device_id, None) or deque()
        while times and times[0] <= now - self._window_s:
            times.popleft()
        self._times[device_id] = times  # most recently seen last
        if len(self._times) > self._remembered:
            self._times.popitem(last=False)
        if len(times) >= self._limit:
            return max(1, math.ceil(times[0] + self._window_s - now))
        times.append(now)
        return None


class Diagnostics:
    """Mints diagnostic grants for approved devices whose calls use the fleet's LiveKit."""

    def __init__(
        self,
        core: ProvisioningCore,
        livekit: LiveKitConfig,
        *,
        clock: Callable[[], float] = time.time,
        ttl_s: int = DIAGNOSTIC_TTL_S,
        per_minute: int = MAX_DIAGNOSTICS_PER_MINUTE,
    ) -> None:
        self._core = core
        self._livekit = livekit
        self._ttl_s = ttl_s
        self._limit = PerDeviceLimit(per_minute, RATE_WINDOW_S, clock=clock)

    async def grant(self, request: SignedRequest) -> DiagnosticGrant:
        """Authenticate `request` (signature, fresh nonce, approved) and give its device a
        token for a throwaway room of its own."""
        device = await self._core.authenticate(request)
        if self._core.provider_of(device).kind is not ProviderKind.LIVEKIT:
            raise GrantsNotHeldError(
                "this device's calls go to a hosted platform: the fleet's LiveKit is not theirs"
            )
        retry_after = self._limit.admit(device.device_id)
        if retry_after is not None:
            logger.warning("diagnostic grant rate limited", extra={"device_id": device.device_id})
            raise RateLimitedError(
                "too many diagnostic grants, try again later", retry_after_s=retry_after
            )
        room = diagnostic_room(device.device_id)
        minted = mint_diagnostic_token(
            api_key=self._livekit.api_key,
            api_secret=self._livekit.api_secret,
            room=room,
            identity=device.identity,
            ttl_s=self._ttl_s,
        )
        audit.info("diagnostic grant", extra={"device_id": device.device_id, "room": room})
        return DiagnosticGrant(
            server_url=self._livekit.url,
            token=minted.jwt,
            room=room,
            identity=device.identity,
            expires_at=minted.expires_at,
        )
