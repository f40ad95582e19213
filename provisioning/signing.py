"""Verification of the request signatures of docs/api.md (Ed25519, timestamp, nonce)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from provisioning.errors import (
    BadRequestError,
    BadSignatureError,
    MissingSignatureError,
    ReplayedRequestError,
    StaleTimestampError,
)
from provisioning.storage.base import Storage

SCHEME = "kiosk-v1"
HEADER_DEVICE_ID = "X-Device-Id"
HEADER_TIMESTAMP = "X-Device-Timestamp"
HEADER_NONCE = "X-Device-Nonce"
HEADER_SIGNATURE = "X-Device-Signature"

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_NONCE = re.compile(r"^[0-9a-f]{32}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
# Header values are read as text by the server; anything outside printable ASCII is refused
# before it reaches a log line, a database or an encoder.
_HEADER_VALUE = re.compile(r"^[\x21-\x7e]{0,256}$")
# Expired nonces are deleted at most this often, not on every request.
NONCE_PURGE_INTERVAL_S = 30.0


@dataclass(frozen=True)
class SignedRequest:
    """The parts of an HTTP request that its signature covers, plus the signing headers."""

    method: str
    path: str
    body: bytes = field(repr=False)
    device_id: str | None
    timestamp: str | None
    nonce: str | None
    signature: str | None = field(repr=False)

    @classmethod
    def from_headers(
        cls, method: str, path: str, body: bytes, headers: Mapping[str, str]
    ) -> SignedRequest:
        """Collect the signing headers (looked up case-insensitively by the caller's mapping).

        Raises `BadSignatureError` for a header that is not printable ASCII.
        """
        values = {}
        for name in (HEADER_DEVICE_ID, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE):
            value = headers.get(name)
            if value is not None and not _HEADER_VALUE.match(value):
                raise BadSignatureError(f"{name} must be printable ASCII, at most 256 characters")
            values[name] = value
        return cls(
            method=method,
            path=path,
            body=body,
            device_id=values[HEADER_DEVICE_ID],
            timestamp=values[HEADER_TIMESTAMP],
            nonce=values[HEADER_NONCE],
            signature=values[HEADER_SIGNATURE],
        )


def canonical_message(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """The exact bytes a device signs for one request."""
    lines = (SCHEME, method.upper(), path, timestamp, nonce, hashlib.sha256(body).hexdigest())
    return "\n".join(lines).encode("utf-8")


def b64url_decode(text: str) -> bytes:
    """Decode URL-safe base64 without padding; raise `ValueError` on anything else."""
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise ValueError("not URL-safe base64 without padding")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError("not URL-safe base64 without padding") from exc


def b64url_encode(data: bytes) -> str:
    """Encode as URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def parse_public_key(text: str) -> bytes:
    """Validate a public key sent as b64url of 32 raw bytes; raise `BadRequestError`."""
    try:
        raw = b64url_decode(text)
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise BadRequestError("public_key must be b64url of a 32-byte Ed25519 key") from exc
    return raw


def device_id_for(public_key: bytes) -> str:
    """`d-` + the first 16 hex digits of SHA-256 of the raw public key."""
    return "d-" + hashlib.sha256(public_key).hexdigest()[:16]


class SignatureVerifier:
    """Checks a request's signature, timestamp window and nonce freshness."""

    def __init__(
        self, storage: Storage, *, clock: Callable[[], float], max_clock_skew_s: int
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._max_skew = max_clock_skew_s
        self._last_purge: float | None = None

    async def verify(self, request: SignedRequest, *, public_key: bytes, device_id: str) -> None:
        """Accept the request or raise an `AuthError`; remembers the nonce on success."""
        timestamp, nonce, signature = request.timestamp, request.nonce, request.signature
        if not timestamp or not nonce or not signature:
            raise MissingSignatureError()
        if not _TIMESTAMP.match(timestamp):
            raise BadSignatureError("X-Device-Timestamp must be whole Unix seconds")
        if not _NONCE.match(nonce):
            raise BadSignatureError("X-Device-Nonce must be 32 lowercase hex characters")
        now = self._clock()
        if abs(int(timestamp) - now) > self._max_skew:
            raise StaleTimestampError()
        try:
            raw_signature = b64url_decode(signature)
            key = Ed25519PublicKey.from_public_bytes(public_key)
            message = canonical_message(
                request.method, request.path, timestamp, nonce, request.body
            )
            key.verify(raw_signature, message)
        except (ValueError, InvalidSignature) as exc:
            raise BadSignatureError() from exc
        # Remember the nonce for as long as its timestamp could still pass the window; a nonce
        # left past that is harmless (its timestamp is refused first), so purging can wait.
        if self._last_purge is None or not 0 <= now - self._last_purge < NONCE_PURGE_INTERVAL_S:
            self._last_purge = now
            await self._storage.purge_nonces(now)
        expires_at = int(timestamp) + self._max_skew + 1
        if not await self._storage.add_nonce(device_id, nonce, expires_at):
            raise ReplayedRequestError()
