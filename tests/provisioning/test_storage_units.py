"""Units of work (storage/units.py) on SQLite and PostgreSQL: batched, isolated, atomic."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from provisioning.errors import StorageConflictError
from provisioning.models import CallRecord, Device, DeviceStatus, HeldGrant, Nonce
from provisioning.storage import SqlStorage
from provisioning.storage.units import SyncSession

pytestmark = pytest.mark.integration

TIMEOUT_S = 10.0


def _insert_code(code_hash: str) -> Callable[[SyncSession], int]:
    def unit(s: SyncSession) -> int:
        return s.execute(
            "INSERT INTO enrollment_codes (code_hash, label, created_at, expires_at)"
            " VALUES (?, '', 0, 1)",
            (code_hash,),
        )

    return unit


def _fail(s: SyncSession) -> None:
    _insert_code("from-a-failing-unit")(s)
    raise ValueError("this unit fails after writing")


async def _codes(storage: SqlStorage) -> set[str]:
    async with storage.db.session() as s:
        rows = await s.fetchall("SELECT code_hash FROM enrollment_codes")
    return {row[0] for row in rows}


async def _with_runner_held(
    storage: SqlStorage, queued: Callable[[], list[asyncio.Future[Any]]]
) -> list[Any]:
    """Hold the runner in a unit until `queued()` has put its units behind it; their
    results (or errors) in order."""
    release = threading.Event()
    started = threading.Event()

    def hold(s: SyncSession) -> None:
        started.set()
        release.wait(TIMEOUT_S)

    async with asyncio.timeout(TIMEOUT_S):
        holder = asyncio.ensure_future(storage.db.run(hold))
        await asyncio.to_thread(started.wait, TIMEOUT_S)
        futures = queued()
        await asyncio.sleep(0)  # every queued unit is in the runner's queue
        release.set()
        await holder
        return list(await asyncio.gather(*futures, return_exceptions=True))


async def test_units_waiting_together_share_one_transaction(storage: SqlStorage) -> None:
    runner = storage.db.units
    before_units, before_transactions = runner.units_run, runner.transactions

    def queued() -> list[asyncio.Future[Any]]:
        return [asyncio.ensure_future(storage.db.run(_insert_code(f"c{i}"))) for i in range(20)]

    results = await _with_runner_held(storage, queued)
    assert results == [1] * 20
    assert await _codes(storage) >= {f"c{i}" for i in range(20)}
    assert runner.units_run - before_units == 21
    # The holder's transaction, then one for the twenty that waited behind it.
    assert runner.transactions - before_transactions == 2


async def test_a_failing_unit_rolls_back_alone(storage: SqlStorage) -> None:
    def queued() -> list[asyncio.Future[Any]]:
        return [
            asyncio.ensure_future(storage.db.run(_insert_code("before"))),
            asyncio.ensure_future(storage.db.run(_fail)),
            asyncio.ensure_future(storage.db.run(_insert_code("before"))),  # a conflict
            asyncio.ensure_future(storage.db.run(_insert_code("after"))),
        ]

    first, failed, conflict, last = await _with_runner_held(storage, queued)
    assert (first, last) == (1, 1)
    assert isinstance(failed, ValueError)
    assert isinstance(conflict, StorageConflictError)
    codes = await _codes(storage)
    assert {"before", "after"} <= codes
    assert "from-a-failing-unit" not in codes


async def test_a_unit_whose_caller_gave_up_before_it_started_never_runs(
    storage: SqlStorage,
) -> None:
    def queued() -> list[asyncio.Future[Any]]:
        gone = asyncio.ensure_future(storage.db.run(_insert_code("abandoned")))
        kept = asyncio.ensure_future(storage.db.run(_insert_code("kept")))
        asyncio.get_running_loop().call_soon(gone.cancel)
        return [kept]

    assert await _with_runner_held(storage, queued) == [1]
    codes = await _codes(storage)
    assert "kept" in codes and "abandoned" not in codes


def _device(device_id: str, status: DeviceStatus = DeviceStatus.APPROVED) -> Device:
    return Device(device_id, device_id.encode().ljust(32, b"k"), "kiosk", status, 0.0)


async def _enrolled(storage: SqlStorage, device: Device) -> None:
    await storage.db.run(
        lambda s: s.execute(
            "INSERT INTO devices (device_id, public_key, name, status, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (device.device_id, device.public_key, device.name, device.status.value, 0.0),
        )
    )


def _call(call_id: str, device_id: str, at: float) -> CallRecord:
    return CallRecord(call_id, device_id, f"call-{call_id}", "button", at, at + 600)


async def test_one_nonce_twice_in_one_batch_admits_one_call(storage: SqlStorage) -> None:
    await _enrolled(storage, _device("d-a"))
    nonce = Nonce("d-a", "0" * 32, 1000.0)

    def queued() -> list[asyncio.Future[Any]]:
        return [
            asyncio.ensure_future(
                storage.admit_call(nonce, _call(f"c-{i}", "d-a", 10.0), since=0.0, limit=10)
            )
            for i in range(2)
        ]

    (first, added_first), (second, added_second) = await _with_runner_held(storage, queued)
    assert (first.fresh, added_first) == (True, True)
    assert (second.fresh, added_second) == (False, False)
    assert [c.call_id for c in await storage.list_calls("d-a")] == ["c-0"]


async def test_admission_reads_the_status_and_records_nothing_for_a_revoked_device(
    storage: SqlStorage,
) -> None:
    await _enrolled(storage, _device("d-r", DeviceStatus.REVOKED))
    admission, added = await storage.admit_call(
        Nonce("d-r", "1" * 32, 1000.0), _call("c-r", "d-r", 10.0), since=0.0, limit=10
    )
    assert (admission.fresh, admission.status, added) == (True, DeviceStatus.REVOKED, False)
    assert await storage.list_calls("d-r") == []
    unknown = await storage.admit(Nonce("d-missing", "2" * 32, 1000.0))
    assert unknown.status is None


async def test_the_rate_limits_hold_inside_the_unit(storage: SqlStorage) -> None:
    await _enrolled(storage, _device("d-l"))
    outcomes = [
        (
            await storage.admit_call(
                Nonce("d-l", f"{i:032x}", 1e3), _call(f"c{i}", "d-l", 10.0 + i), since=5.0, limit=3
            )
        )[1]
        for i in range(5)
    ]
    assert outcomes == [True, True, True, False, False]
    grants = [
        (
            await storage.admit_grant(
                Nonce("d-l", f"{100 + i:032x}", 1e3),
                HeldGrant(f"g{i}", "d-l", f"call-g{i}", 10.0 + i, 700.0),
                keep_since=0.0,
                since=5.0,
                limit=2,
            )
        )[1]
        for i in range(3)
    ]
    assert grants == [True, True, False]
    assert (await storage.count_grants_since("d-l", 5.0))[0] == 2


async def test_a_grant_is_admitted_once_for_its_nonce_and_clears_its_expired_ones(
    storage: SqlStorage,
) -> None:
    await _enrolled(storage, _device("d-g"))
    await _enrolled(storage, _device("d-p", DeviceStatus.PENDING))

    async def admit(device_id: str, nonce: int, call_id: str, at: float) -> tuple[bool, bool]:
        admission, added = await storage.admit_grant(
            Nonce(device_id, f"{nonce:032x}", 1e4),
            HeldGrant(call_id, device_id, f"call-{call_id}", at, at + 100.0),
            keep_since=at - 50.0,
            since=at - 60.0,
            limit=3,
        )
        return admission.fresh, added

    assert await admit("d-g", 1, "g1", 10.0) == (True, True)
    assert await admit("d-g", 2, "g2", 20.0) == (True, True)
    assert await admit("d-g", 2, "g3", 30.0) == (False, False)  # the same nonce again
    assert await storage.count_grants_since("d-g", 0.0) == (2, 10.0)
    # At 200 both have expired (110, 120 < 150): cleared as the new one is added.
    assert await admit("d-g", 3, "g4", 200.0) == (True, True)
    assert await storage.count_grants_since("d-g", 0.0) == (1, 200.0)
    # Not approved: the nonce is spent, nothing else is written.
    assert await admit("d-p", 1, "p1", 10.0) == (True, False)
    assert await storage.count_grants_since("d-p", 0.0) == (0, None)
    for n, call_id in ((4, "g5"), (5, "g6")):
        assert await admit("d-g", n, call_id, 201.0) == (True, True)
    assert await admit("d-g", 6, "g7", 400.0) == (True, True)  # 200-201 expired: cleared
    assert await storage.count_grants_since("d-g", 0.0) == (1, 400.0)
    for n, call_id in ((7, "g8"), (8, "g9")):
        assert await admit("d-g", n, call_id, 401.0) == (True, True)
    # Over the limit: the nonce is spent, no grant added.
    assert await admit("d-g", 9, "g10", 402.0) == (True, False)
    assert await storage.count_grants_since("d-g", 0.0) == (3, 400.0)
