"""Refusals for a call whose upstream platform failed: distinct status/code pairs the device
tells apart from its own credentials problem (docs/api.md, "Upstream platforms")."""

from __future__ import annotations

from provisioning.errors import ProvisioningError, RateLimitedError

# A platform that answers 5xx or not at all is asked again after this long at the soonest.
UNAVAILABLE_RETRY_AFTER_S = 10
# A platform's 429 without a usable Retry-After (HMS: "user must wait", no figure).
RATE_LIMIT_RETRY_AFTER_S = 10


class UpstreamError(ProvisioningError):
    """The call's platform refused or failed; `upstream_status` is its HTTP status, if any."""

    status = 502

    def __init__(self, message: str, *, upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status


class UpstreamKeyRejectedError(UpstreamError, PermissionError):
    """The platform refused the fleet's API key, or the key may not use that agent (401/403)."""

    code = "upstream_key_rejected"


class UpstreamBadRequestError(UpstreamError, ValueError):
    """The platform refused the request as malformed (400, another 4xx): fleet settings."""

    code = "upstream_bad_request"


class ProviderMisconfiguredError(UpstreamError, ValueError):
    """The device's provider settings or the backend's [platforms] config cannot make a call."""

    status = 500
    code = "provider_misconfigured"


class UpstreamOutOfCreditError(UpstreamError):
    """The platform's account has no credit left (402)."""

    code = "upstream_out_of_credit"


class UpstreamUnavailableError(UpstreamError, ConnectionError):
    """The platform is down, slow (timeout) or answered 5xx or nonsense."""

    status = 503
    code = "upstream_unavailable"

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        retry_after_s: int = UNAVAILABLE_RETRY_AFTER_S,
    ) -> None:
        super().__init__(message, upstream_status=upstream_status)
        self.retry_after_s = retry_after_s


class UpstreamRateLimitedError(RateLimitedError):
    """The platform's concurrency or rate limit (429); Retry-After is passed on."""

    code = "upstream_rate_limited"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.upstream_status = 429
