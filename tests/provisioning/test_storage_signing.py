"""Storage and signature verification against a real SQLite file and an injected clock."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioning.errors import (
    BadSignatureError,
    MissingSignatureError,
    ReplayedRequestError,
    StaleTimestampError,
    StorageError,
)
from provisioning.signing import (
    SignatureVerifier,
    SignedRequest,
    canonical_message,
    device_id_for,
)
from provisioning.storage import SCHEMA_VERSION, Storage

from .conftest import FakeClock, TestDevice

pytestmark = pytest.mark.integration


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    with Storage(tmp_path / "db" / "state.sqlite3") as store:
        yield store


def test_canonical_message_matches_docs() -> None:
    body = b'{"trigger": "button"}'
    expected = (
        "kiosk-v1\nPOST\n/v1/calls\n1763841000\n00112233445566778899aabbccddeeff\n"
        + hashlib.sha256(body).hexdigest()
    ).encode()
    message = canonical_message(
        "post", "/v1/calls", "1763841000", "00112233445566778899aabbccddeeff", body
    )
    assert message == expected
    empty = canonical_message("GET", "/v1/device", "1", "0" * 32, b"")
    assert empty.endswith(b"\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


def test_device_id_is_prefix_of_key_hash() -> None:
    device = TestDevice()
    assert device_id_for(device.public_raw) == device.device_id


def test_schema_is_versioned_and_wal(storage: Storage) -> None:
    assert storage.schema_version() == SCHEMA_VERSION
    with sqlite3.connect(storage.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"schema_version", "enrollment_codes", "devices", "nonces", "calls"} <= tables


def test_reopen_keeps_one_version_row(tmp_path: Path) -> None:
    Storage(tmp_path / "a.sqlite3").close()
    with Storage(tmp_path / "a.sqlite3") as again:
        assert again.schema_version() == SCHEMA_VERSION
    with sqlite3.connect(tmp_path / "a.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 1


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Storage(tmp_path / "a.sqlite3").close()
    with sqlite3.connect(tmp_path / "a.sqlite3") as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StorageError, match="schema version"):
        Storage(tmp_path / "a.sqlite3")


def test_nonce_insert_or_fail_and_purge(storage: Storage) -> None:
    assert storage.add_nonce("d-1", "n1", expires_at=100.0)
    assert not storage.add_nonce("d-1", "n1", expires_at=200.0)
    assert storage.add_nonce("d-2", "n1", expires_at=100.0)
    assert storage.purge_nonces(now=100.0) == 2
    assert storage.count_nonces() == 0
    assert storage.add_nonce("d-1", "n1", expires_at=300.0)


def make_request(device: TestDevice, timestamp: int, **overrides: str) -> SignedRequest:
    body = b'{"trigger": "button"}'
    headers = device.headers("POST", "/v1/calls", body, timestamp=timestamp)
    headers.update(overrides)
    return SignedRequest.from_headers("POST", "/v1/calls", body, headers)


def test_verifier_accepts_then_refuses_replay(storage: Storage) -> None:
    clock = FakeClock()
    verifier = SignatureVerifier(storage, clock=clock, max_clock_skew_s=60)
    device = TestDevice()
    request = make_request(device, int(clock.now))
    verifier.verify(request, public_key=device.public_raw, device_id=device.device_id)
    with pytest.raises(ReplayedRequestError):
        verifier.verify(request, public_key=device.public_raw, device_id=device.device_id)
    # Once the window has passed the nonce is forgotten, and the timestamp is stale.
    clock.advance(61)
    with pytest.raises(StaleTimestampError):
        verifier.verify(request, public_key=device.public_raw, device_id=device.device_id)
    verifier.verify(
        make_request(device, int(clock.now)), public_key=device.public_raw, device_id="x"
    )
    assert storage.count_nonces() == 1


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"X-Device-Signature": ""}, MissingSignatureError),
        ({"X-Device-Signature": "!!!"}, BadSignatureError),
        ({"X-Device-Signature": "AAAA"}, BadSignatureError),
        ({"X-Device-Timestamp": "12.5"}, BadSignatureError),
        ({"X-Device-Nonce": "short"}, BadSignatureError),
    ],
)
def test_malformed_headers(
    storage: Storage, overrides: dict[str, str], error: type[Exception]
) -> None:
    clock = FakeClock()
    verifier = SignatureVerifier(storage, clock=clock, max_clock_skew_s=60)
    device = TestDevice()
    with pytest.raises(error):
        verifier.verify(
            make_request(device, int(clock.now), **overrides),
            public_key=device.public_raw,
            device_id=device.device_id,
        )
    assert storage.count_nonces() == 0
