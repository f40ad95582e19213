"""Call providers: the fleet's own LiveKit server and the hosted platforms (docs/platforms.md)."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from provisioning.config import PlatformConfig
from provisioning.providers.base import (
    CallProvider,
    CallRequest,
    ProviderGrant,
    ProviderKind,
    unverified_claims,
)
from provisioning.providers.errors import (
    ProviderMisconfiguredError,
    UpstreamBadRequestError,
    UpstreamError,
    UpstreamKeyRejectedError,
    UpstreamOutOfCreditError,
    UpstreamRateLimitedError,
    UpstreamUnavailableError,
)
from provisioning.providers.livekit import OwnLiveKit
from provisioning.providers.platforms import (
    Call2Me,
    Click2Call,
    HmsVoiceDock,
    ThinnestAI,
    Vatel,
)
from provisioning.providers.settings import ProviderChoice, check_provider, resolve
from provisioning.providers.upstream import Upstream

__all__ = [
    "CallProvider",
    "CallRequest",
    "OwnLiveKit",
    "ProviderChoice",
    "ProviderGrant",
    "ProviderKind",
    "ProviderMisconfiguredError",
    "UpstreamBadRequestError",
    "UpstreamError",
    "UpstreamKeyRejectedError",
    "UpstreamOutOfCreditError",
    "UpstreamRateLimitedError",
    "UpstreamUnavailableError",
    "check_provider",
    "platform_providers",
    "resolve",
    "unverified_claims",
]


def platform_providers(
    platforms: Mapping[str, PlatformConfig], *, transport: httpx.AsyncBaseTransport | None = None
) -> dict[ProviderKind, CallProvider]:
    """The configured platforms' providers, by kind (`Config.platforms`)."""
    built: dict[ProviderKind, CallProvider] = {}
    for name, config in platforms.items():
        kind = ProviderKind(name)
        if kind is ProviderKind.CLICK2CALL:
            headers = {"X-api-key": config.api_key}  # seed 003 line 20
        else:  # Bearer: seeds 000 l. 24, 002 l. 16, 004 l. 42; Vatel's is an assumption
            headers = {"Authorization": f"Bearer {config.api_key}"}
        upstream = Upstream(kind.value, config.base_url, config.timeout_s, headers)
        if kind is ProviderKind.CALL2ME:
            built[kind] = Call2Me(upstream, transport)
        elif kind is ProviderKind.VATEL:
            built[kind] = Vatel(upstream, transport, session_path=config.session_path)
        elif kind is ProviderKind.THINNESTAI:
            built[kind] = ThinnestAI(upstream, transport)
        elif kind is ProviderKind.CLICK2CALL:
            built[kind] = Click2Call(upstream, transport)
        elif kind is ProviderKind.HMSVOICEDOCK:
            built[kind] = HmsVoiceDock(upstream, transport)
    return built
