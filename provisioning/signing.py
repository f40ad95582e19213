"""Verification of the request signatures of docs/api.md (Ed25519, timestamp, nonce)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import nacl.exceptions
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nacl.signing import VerifyKey

from provisioning.errors import (
    BadRequestError,
    BadSignatureError,
    MissingSignatureError,
    ReplayedRequestError,
    StaleTimestampError,
)
from provisioning.models import Nonce
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
    """Checks a request's signature, timestamp window and nonce freshness.

    `check` is the CPU part and returns the nonce; the request counts only once that
    nonce is spent (`Storage.admit`, or `verify` here, which does both), so the core can
    spend it in the same database unit as the request's own work.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        clock: Callable[[], float],
        max_clock_skew_s: int,
        keys_cached: int = 10_000,
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._max_skew = max_clock_skew_s
        self._last_purge: float | None = None
        self._keys: dict[bytes, VerifyKey] = {}
        self._keys_cached = keys_cached

    def check(self, request: SignedRequest, *, public_key: bytes, device_id: str) -> Nonce:
        """The request's nonce, to be spent, if its signature and timestamp are good;
        otherwise an `AuthError`."""
        timestamp, nonce, signature = request.timestamp, request.nonce, request.signature
        if not timestamp or not nonce or not signature:
            raise MissingSignatureError()
        if not _TIMESTAMP.match(timestamp):
            raise BadSignatureError("X-Device-Timestamp must be whole Unix seconds")
        if not _NONCE.match(nonce):
            raise BadSignatureError("X-Device-Nonce must be 32 lowercase hex characters")
        if abs(int(timestamp) - self._clock()) > self._max_skew:
            raise StaleTimestampError()
        try:
            raw_signature = b64url_decode(signature)
            message = canonical_message(
                request.method, request.path, timestamp, nonce, request.body
            )
            self._key(public_key).verify(message, raw_signature)
        except (ValueError, nacl.exceptions.BadSignatureError) as exc:
            raise BadSignatureError() from exc
        # Remembered for as long as its timestamp could still pass the window; a nonce left
        # past that is harmless (its timestamp is refused first), so purging can wait.
        return Nonce(device_id, nonce, int(timestamp) + self._max_skew + 1)

    async def purge_if_due(self) -> None:
        """Forget expired nonces, at most every `NONCE_PURGE_INTERVAL_S`."""
        now = self._clock()
        if self._last_purge is None or not 0 <= now - self._last_purge < NONCE_PURGE_INTERVAL_S:
            self._last_purge = now
            await self._storage.purge_nonces(now)

    async def verify(self, request: SignedRequest, *, public_key: bytes, device_id: str) -> None:
        """Accept the request or raise an `AuthError`; remembers the nonce on success."""
        nonce = self.check(request, public_key=public_key, device_id=device_id)
        await self.purge_if_due()
        if not await self._storage.add_nonce(nonce.device_id, nonce.value, nonce.expires_at):
            raise ReplayedRequestError()

    def _key(self, public_key: bytes) -> VerifyKey:
        """libsodium's key object for `public_key`, kept for the devices seen last."""
        key = self._keys.get(public_key)
        if key is None:
            key = VerifyKey(public_key)
            if len(self._keys) >= self._keys_cached:
                del self._keys[next(iter(self._keys))]
            self._keys[public_key] = key
        return key
