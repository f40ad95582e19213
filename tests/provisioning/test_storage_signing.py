"""Storage (on SQLite and on PostgreSQL) and signature verification, with an injected clock."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import pytest

from provisioning.config import DatabaseConfig
from provisioning.errors import (
    BadSignatureError,
    MissingSignatureError,
    ReplayedRequestError,
    SchemaTooNewError,
    StaleTimestampError,
    StorageConflictError,
)
from provisioning.models import (
    CallRecord,
    Device,
    DeviceReport,
    DeviceStatus,
    EnrollmentCode,
    FlagReason,
    LiveKitEventRecord,
    Nonce,
)
from provisioning.signing import (
    SignatureVerifier,
    SignedRequest,
    canonical_message,
    device_id_for,
)
from provisioning.storage import LATEST_VERSION, SqlStorage, open_storage
from provisioning.storage.schema import MIGRATIONS

from .conftest import FakeClock, TestDevice, database_config

pytestmark = pytest.mark.integration

TIMEOUT_S = 10.0


def code(code_hash: str = "h1", expires_at: float = 2.0e9) -> EnrollmentCode:
    return EnrollmentCode(code_hash, "label", 1.0e9, expires_at, None, None)


def a_device(device_id: str = "d-1", key: bytes = b"k" * 32) -> Device:
    return Device(device_id, key, "kiosk", DeviceStatus.APPROVED, 1.0e9)


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


async def test_schema_is_migrated_to_latest(storage: SqlStorage) -> None:
    assert await storage.schema_version() == LATEST_VERSION


async def test_sqlite_is_wal_and_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "state.sqlite3"
    store = await open_storage(DatabaseConfig(path=path))
    try:
        await store.add_enrollment_code(code())  # writes the WAL
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
        for sibling in path.parent.iterdir():
            assert sibling.stat().st_mode & 0o077 == 0, sibling
    finally:
        await store.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"schema_version", "enrollment_codes", "devices", "nonces", "calls"} <= tables


async def test_reopen_keeps_one_version_row_per_step(tmp_path: Path) -> None:
    config = DatabaseConfig(path=tmp_path / "a.sqlite3")
    await (await open_storage(config)).aclose()
    again = await open_storage(config)
    try:
        assert await again.schema_version() == LATEST_VERSION
    finally:
        await again.aclose()
    with sqlite3.connect(config.path) as db:
        assert db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == LATEST_VERSION


async def test_version_one_database_of_the_old_backend_is_kept(tmp_path: Path) -> None:
    # The schema as the first backend wrote it, with rows in it.
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (1)")
        for statement in MIGRATIONS[0].sql("sqlite"):
            db.execute(statement)
        db.execute("INSERT INTO enrollment_codes VALUES ('h0', 'old', 1, 2, NULL, NULL)")
        db.execute("INSERT INTO devices VALUES ('d-0', ?, 'old', 'approved', 1)", (b"k" * 32,))
    store = await open_storage(DatabaseConfig(path=path))
    try:
        assert await store.schema_version() == LATEST_VERSION
        kept = await store.get_enrollment_code("h0")
        assert kept is not None and kept.label == "old"
        device = await store.get_device("d-0")
        assert device is not None and device.name == "old" and device.flagged_at is None
    finally:
        await store.aclose()


async def test_newer_schema_is_refused(tmp_path: Path, database_url: str | None) -> None:
    config = database_config(tmp_path, database_url)
    store = await open_storage(config)
    try:
        async with store.db.session() as session:
            await session.execute(
                "INSERT INTO schema_version (version) VALUES (?)", (LATEST_VERSION + 1,)
            )
    finally:
        await store.aclose()
    with pytest.raises(SchemaTooNewError, match="schema version"):
        await open_storage(config)


async def test_nonce_insert_or_fail_and_purge(storage: SqlStorage) -> None:
    assert await storage.add_nonce("d-1", "n1", expires_at=100.0)
    assert not await storage.add_nonce("d-1", "n1", expires_at=200.0)
    assert await storage.add_nonce("d-2", "n1", expires_at=100.0)
    assert await storage.purge_nonces(now=100.0) == 2
    assert await storage.count_nonces() == 0
    assert await storage.add_nonce("d-1", "n1", expires_at=300.0)


async def test_enroll_spends_the_code_once_and_keeps_keys_unique(storage: SqlStorage) -> None:
    await storage.add_enrollment_code(code("h1"))
    await storage.add_enrollment_code(code("h2"))
    await storage.add_enrollment_code(code("h3", expires_at=1.5e9))
    assert await storage.enroll_device(a_device("d-1", b"a" * 32), "h1", now=1.1e9)
    assert not await storage.enroll_device(a_device("d-2", b"b" * 32), "h1", now=1.1e9)
    assert not await storage.enroll_device(a_device("d-2", b"b" * 32), "h3", now=1.6e9)
    assert not await storage.enroll_device(a_device("d-2", b"b" * 32), "missing", now=1.1e9)
    # A taken key is a conflict, and the code it came with is not spent.
    with pytest.raises(StorageConflictError):
        await storage.enroll_device(a_device("d-3", b"a" * 32), "h2", now=1.1e9)
    unspent = await storage.get_enrollment_code("h2")
    assert unspent is not None and unspent.used_at is None
    stored = await storage.get_device_by_public_key(b"a" * 32)
    assert stored is not None and stored.device_id == "d-1" and stored.public_key == b"a" * 32
    assert [d.device_id for d in await storage.list_devices()] == ["d-1"]


async def test_enrollment_code_spent_once_under_concurrency(storage: SqlStorage) -> None:
    await storage.add_enrollment_code(code("h1"))
    results = await asyncio.gather(
        *(
            storage.enroll_device(a_device(f"d-{i}", bytes([i]) * 32), "h1", now=1.1e9)
            for i in range(8)
        )
    )
    assert sorted(result is not None for result in results) == [False] * 7 + [True]
    assert len(await storage.list_devices()) == 1


async def test_calls_round_trip(storage: SqlStorage) -> None:
    await storage.add_enrollment_code(code())
    assert await storage.enroll_device(a_device(), "h1", now=1.1e9)
    call = CallRecord("c-1", "d-1", "call-c-1", "button", 1.2e9, 1.2e9 + 600)
    await storage.add_call(call)
    assert await storage.get_call("c-1") == call
    assert await storage.count_calls_since("d-1", 1.0e9) == (1, 1.2e9)
    assert await storage.count_calls_since("d-1", 1.3e9) == (0, None)
    assert await storage.end_call("c-1", 1.2e9 + 5, "user", 5000)
    assert not await storage.end_call("c-1", 1.2e9 + 9, "idle", 9000)
    [ended] = await storage.list_calls("d-1")
    assert (ended.end_reason, ended.duration_ms, ended.ended_at) == ("user", 5000, 1.2e9 + 5)
    assert await storage.list_calls("d-other") == []
    assert await storage.set_device_status("d-1", DeviceStatus.REVOKED)
    assert not await storage.set_device_status("d-none", DeviceStatus.REVOKED)


async def test_a_check_in_spends_its_nonce_and_records_the_report_of_devices_let_in(
    storage: SqlStorage,
) -> None:
    await storage.add_enrollment_code(code())
    assert await storage.enroll_device(a_device(), "h1", now=1.1e9)
    report = DeviceReport(firmware="2.0.1", board="respeaker-2mic", state="ready")

    admission, device = await storage.check_in(Nonce("d-1", "n1", 2.0e9), report, 1.2e9, -3.0)
    assert (admission.fresh, admission.status) == (True, DeviceStatus.APPROVED)
    assert device is not None
    seen = (device.last_seen, device.firmware, device.board, device.state, device.last_error)
    assert seen == (1.2e9, "2.0.1", "respeaker-2mic", "ready", None)
    assert device.clock_offset_s == -3.0
    assert await storage.get_device("d-1") == device

    # The same nonce again: refused, nothing written.
    replay = DeviceReport(state="in_call")
    admission, device = await storage.check_in(Nonce("d-1", "n1", 2.0e9), replay, 1.3e9, 0.0)
    assert (admission.fresh, device) == (False, None)
    stored = await storage.get_device("d-1")
    assert stored is not None and (stored.last_seen, stored.state) == (1.2e9, "ready")

    # A revoked device: its nonce is spent, its report is not recorded.
    assert await storage.set_device_status("d-1", DeviceStatus.REVOKED)
    admission, device = await storage.check_in(Nonce("d-1", "n2", 2.0e9), replay, 1.4e9, 0.0)
    assert (admission.fresh, admission.status) == (True, DeviceStatus.REVOKED)
    assert device is not None and (device.last_seen, device.state) == (1.2e9, "ready")

    # A device nobody knows.
    admission, device = await storage.check_in(Nonce("d-9", "n1", 2.0e9), replay, 1.4e9, 0.0)
    assert (admission.fresh, admission.status, device) == (True, None, None)


async def test_a_device_is_flagged_once(storage: SqlStorage) -> None:
    await storage.add_enrollment_code(code())
    assert await storage.enroll_device(a_device(), "h1", now=1.1e9)
    assert (await storage.list_devices())[0].flagged_at is None
    assert await storage.flag_device("d-1", FlagReason.NON_AUDIO_TRACK, 1.2e9)
    # The first flag stays: when and why the device was first caught.
    assert not await storage.flag_device("d-1", FlagReason.NON_MICROPHONE_SOURCE, 1.3e9)
    assert not await storage.flag_device("d-none", FlagReason.NON_AUDIO_TRACK, 1.2e9)
    device = await storage.get_device("d-1")
    assert device is not None
    assert (device.flagged_at, device.flag_reason) == (1.2e9, FlagReason.NON_AUDIO_TRACK)


async def test_livekit_events_recorded_once_forgotten_and_purged(storage: SqlStorage) -> None:
    first = LiveKitEventRecord("EV_1", "track_published", "call-c-1", 1.0e9, 1.1e9)
    assert await storage.add_livekit_event(first)
    assert not await storage.add_livekit_event(
        LiveKitEventRecord("EV_1", "room_finished", "call-c-2", 1.0e9, 1.2e9)
    )
    assert await storage.add_livekit_event(
        LiveKitEventRecord("EV_2", "room_finished", "", 1.0e9, 1.3e9)
    )
    assert await storage.list_livekit_events("call-c-1") == [first]
    assert [e.event_id for e in await storage.list_livekit_events()] == ["EV_1", "EV_2"]
    await storage.forget_livekit_event("EV_1")
    assert await storage.add_livekit_event(first)
    assert await storage.purge_livekit_events(before=1.2e9) == 1
    assert [e.event_id for e in await storage.list_livekit_events()] == ["EV_2"]


def make_request(device: TestDevice, timestamp: int, **overrides: str) -> SignedRequest:
    body = b'{"trigger": "button"}'
    headers = device.headers("POST", "/v1/calls", body, timestamp=timestamp)
    headers.update(overrides)
    return SignedRequest.from_headers("POST", "/v1/calls", body, headers)


async def test_verifier_accepts_then_refuses_replay(storage: SqlStorage) -> None:
    clock = FakeClock()
    verifier = SignatureVerifier(storage, clock=clock, max_clock_skew_s=60)
    device = TestDevice()
    request = make_request(device, int(clock.now))
    await verifier.verify(request, public_key=device.public_raw, device_id=device.device_id)
    with pytest.raises(ReplayedRequestError):
        await verifier.verify(request, public_key=device.public_raw, device_id=device.device_id)
    # Once the window has passed the nonce is forgotten, and the timestamp is stale.
    clock.advance(61)
    with pytest.raises(StaleTimestampError):
        await verifier.verify(request, public_key=device.public_raw, device_id=device.device_id)
    await verifier.verify(
        make_request(device, int(clock.now)), public_key=device.public_raw, device_id="x"
    )
    assert await storage.count_nonces() == 1


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
async def test_malformed_headers(
    storage: SqlStorage, overrides: dict[str, str], error: type[Exception]
) -> None:
    clock = FakeClock()
    verifier = SignatureVerifier(storage, clock=clock, max_clock_skew_s=60)
    device = TestDevice()
    with pytest.raises(error):
        await verifier.verify(
            make_request(device, int(clock.now), **overrides),
            public_key=device.public_raw,
            device_id=device.device_id,
        )
    assert await storage.count_nonces() == 0
