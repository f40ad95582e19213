"""Webhook signatures: HMAC-SHA256 over `id.timestamp.body`, in Standard Webhooks' headers."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

ID_HEADER = "Webhook-Id"
TIMESTAMP_HEADER = "Webhook-Timestamp"
SIGNATURE_HEADER = "Webhook-Signature"
SIGNATURE_VERSION = "v1"
# A receiver refuses a timestamp further than this from its own clock (docs/webhooks.md).
REPLAY_WINDOW_S = 300


def signature(secret: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    """`v1,` + base64 of HMAC-SHA256(secret, f"{event_id}.{timestamp}." + body)."""
    signed = f"{event_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def signed_headers(secret: bytes, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one delivery attempt of `body`, stamped `timestamp` (Unix seconds)."""
    return {
        ID_HEADER: event_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, event_id, timestamp, body),
    }


def verify(
    secret: bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    window_s: int = REPLAY_WINDOW_S,
) -> bool:
    """Whether `headers` sign `body` with `secret`, stamped within `window_s` of `now`.

    The receiver's side, as docs/webhooks.md describes it (keys are matched exactly:
    pass a case-insensitive mapping such as aiohttp's or httpx's headers).
    """
    event_id = headers.get(ID_HEADER)
    stamp = headers.get(TIMESTAMP_HEADER)
    signatures = headers.get(SIGNATURE_HEADER)
    if not event_id or not stamp or not signatures or not stamp.isdigit():
        return False
    if abs(now - int(stamp)) > window_s:
        return False
    expected = signature(secret, event_id, int(stamp), body)
    # Several space-separated signatures may come (a secret being rotated): one must match.
    return any(hmac.compare_digest(expected, given) for given in signatures.split())
