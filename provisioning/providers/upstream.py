"""One HTTP request to a platform, bounded in time, its failures translated in one table.

The API key goes in a header and nowhere else: not in a log line, an error message or a
`repr`. Platform error bodies are logged only as their status and a short, printable detail.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from provisioning.errors import ProvisioningError
from provisioning.providers.errors import (
    RATE_LIMIT_RETRY_AFTER_S,
    UpstreamBadRequestError,
    UpstreamError,
    UpstreamKeyRejectedError,
    UpstreamOutOfCreditError,
    UpstreamRateLimitedError,
    UpstreamUnavailableError,
)

logger = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 3600
_Refusal = TypeVar("_Refusal", bound=ProvisioningError)
MAX_DETAIL_CHARS = 120


@dataclass(frozen=True)
class Upstream:
    """A platform's API: where it is, how long a request may take, how the key is sent."""

    name: str
    base_url: str
    timeout_s: float
    headers: Mapping[str, str] = field(repr=False)


async def post_json(
    upstream: Upstream,
    path: str,
    body: Mapping[str, Any],
    *,
    context: Mapping[str, str],
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    """POST `body` to the platform; its JSON object answer, or an `UpstreamError`.

    The whole exchange (connect, send, answer) is bounded by `upstream.timeout_s`.
    """
    url = upstream.base_url.rstrip("/") + path
    try:
        async with asyncio.timeout(upstream.timeout_s):
            async with httpx.AsyncClient(
                timeout=upstream.timeout_s, transport=transport, follow_redirects=False
            ) as client:
                response = await client.post(url, json=dict(body), headers=dict(upstream.headers))
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise _logged(
            UpstreamUnavailableError(f"{upstream.name} did not answer in {upstream.timeout_s:g} s"),
            context,
        ) from exc
    except httpx.HTTPError as exc:
        raise _logged(
            UpstreamUnavailableError(f"{upstream.name} unreachable: {type(exc).__name__}"),
            context,
        ) from exc
    return _decoded(upstream.name, response, context)


def _decoded(name: str, response: httpx.Response, context: Mapping[str, str]) -> dict[str, Any]:
    status = response.status_code
    try:
        data = response.json() if response.content else None
    except ValueError:
        data = None
    if 200 <= status < 300:
        if not isinstance(data, dict):
            raise _logged(
                UpstreamUnavailableError(f"{name} answered {status} without a JSON object"),
                context,
            )
        return data
    raise _logged(_refusal(name, status, response.headers.get("Retry-After"), data), context)


def _refusal(
    name: str, status: int, retry_after: str | None, data: object
) -> UpstreamError | UpstreamRateLimitedError:
    """The one translation table: a platform's HTTP status to our refusal."""
    detail = _detail(data)
    message = f"{name} answered {status}" + (f": {detail}" if detail else "")
    if status in (401, 403):
        return UpstreamKeyRejectedError(message, upstream_status=status)
    if status == 402:
        return UpstreamOutOfCreditError(message, upstream_status=status)
    if status == 429:
        return UpstreamRateLimitedError(message, retry_after_s=_retry_after(retry_after))
    if 400 <= status < 500:
        return UpstreamBadRequestError(message, upstream_status=status)
    return UpstreamUnavailableError(message, upstream_status=status)


def _detail(data: object) -> str:
    """A platform's short reason (`detail`, `error`, `message`), printable and cut short."""
    if not isinstance(data, dict):
        return ""
    for key in ("detail", "error", "message"):
        value = data.get(key)
        if isinstance(value, str) and value:
            text = "".join(ch if ch.isprintable() else "?" for ch in value)
            return text[:MAX_DETAIL_CHARS]
    return ""


def _retry_after(value: str | None) -> int:
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        return RATE_LIMIT_RETRY_AFTER_S
    return max(1, min(MAX_RETRY_AFTER_S, math.ceil(seconds)))


def _logged(exc: _Refusal, context: Mapping[str, str]) -> _Refusal:
    logger.warning(
        "platform refused the call: %s",
        exc.message,
        extra={**context, "error_code": exc.code},
    )
    return exc
