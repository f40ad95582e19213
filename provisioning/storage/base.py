"""The storage seam: what the core may ask of a database, and what a database must offer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from provisioning.models import (
    AdminAction,
    Admission,
    CallRecord,
    Device,
    DeviceReport,
    DeviceStatus,
    EnrollmentCode,
    FlagReason,
    HeldGrant,
    LiveKitEventRecord,
    Nonce,
)

if TYPE_CHECKING:
    from provisioning.storage.units import Unit, UnitRunner

T = TypeVar("T")
Dialect = Literal["sqlite", "postgresql"]
Row = tuple[Any, ...]


class Storage(Protocol):
    """The backend's state, as the core sees it; every method may raise a `StorageError`.

    `StorageUnavailableError` means "try again later" (locked, down, too slow);
    `StorageConflictError` a unique key that already exists.
    """

    async def schema_version(self) -> int:
        """The schema version recorded in the database."""
        ...

    async def add_enrollment_code(self, code: EnrollmentCode) -> None:
        """Store a new enrollment code (by hash)."""
        ...

    async def get_enrollment_code(self, code_hash: str) -> EnrollmentCode | None:
        """The enrollment code with this hash, if any."""
        ...

    async def enroll_device(self, device: Device, code_hash: str, now: float) -> Device | None:
        """Atomically spend an unused, unexpired code on `device` and store the device:
        pending if the code requires approval, in the code's group; the device stored.

        None (and nothing stored) if the code cannot be spent; `StorageConflictError`
        if the device id or public key is taken.
        """
        ...

    async def list_enrollment_codes(self) -> list[EnrollmentCode]:
        """Every enrollment code (by hash), newest first."""
        ...

    async def get_device(self, device_id: str) -> Device | None:
        """The device with this id, if any."""
        ...

    async def get_device_by_public_key(self, public_key: bytes) -> Device | None:
        """The device holding this raw public key, if any."""
        ...

    async def list_devices(self) -> list[Device]:
        """All devices, oldest first."""
        ...

    async def set_device_status(self, device_id: str, status: DeviceStatus) -> bool:
        """Change a device's status; False if there is no such device."""
        ...

    async def change_device(
        self,
        device_id: str,
        action: AdminAction,
        *,
        status: DeviceStatus | None = None,
        from_statuses: tuple[DeviceStatus, ...] = (),
        settings: Mapping[str, Any] | None = None,
        group: str | None = None,
        clear_group: bool = False,
    ) -> Device | None:
        """Change a device's status (only from `from_statuses`, if given), settings or
        group, and record `action`, atomically; None if no device was changed."""
        ...

    async def check_in(
        self, nonce: Nonce, report: DeviceReport, now: float, clock_offset_s: float
    ) -> tuple[Admission, Device | None]:
        """Spend the nonce; for an approved or pending device record its report and
        `now` as last seen. Returns the admission and the device as it is now. Atomic."""
        ...

    async def set_group_settings(
        self, group: str, settings: Mapping[str, Any], action: AdminAction
    ) -> None:
        """Create or replace a group's settings and record `action`, atomically."""
        ...

    async def list_groups(self) -> dict[str, Mapping[str, Any]]:
        """Every group and its settings, by name."""
        ...

    async def add_admin_action(self, action: AdminAction) -> None:
        """Record an admin action that changed no device row."""
        ...

    async def list_admin_actions(self, limit: int = 100) -> list[AdminAction]:
        """The latest admin actions, newest first."""
        ...

    async def flag_device(self, device_id: str, reason: FlagReason, flagged_at: float) -> bool:
        """Flag a device that is not flagged yet; False if it already is, or does not exist."""
        ...

    async def add_nonce(self, device_id: str, nonce: str, expires_at: float) -> bool:
        """Remember a nonce; False if this device already used it and it is remembered."""
        ...

    async def admit(self, nonce: Nonce) -> Admission:
        """Spend a request's nonce and read its device's status, atomically."""
        ...

    async def admit_call(
        self, nonce: Nonce, call: CallRecord, *, since: float, limit: int
    ) -> tuple[Admission, bool]:
        """`admit`; then, only for an approved device, `add_call_within_rate`. Atomic."""
        ...

    async def admit_grant(
        self, nonce: Nonce, grant: HeldGrant, *, keep_since: float, since: float, limit: int
    ) -> tuple[Admission, bool]:
        """`admit`; then, only for an approved device with fewer than `limit` grants after
        `since`, `add_grant`. Atomic."""
        ...

    async def purge_nonces(self, now: float) -> int:
        """Forget nonces whose window has passed; returns how many."""
        ...

    async def count_nonces(self) -> int:
        """How many nonces are remembered."""
        ...

    async def add_call(self, call: CallRecord) -> None:
        """Record a new call."""
        ...

    async def add_call_within_rate(self, call: CallRecord, *, since: float, limit: int) -> bool:
        """Record a new call unless the device started `limit` calls after `since`; False
        (nothing stored) if it did. One statement: the rate check costs no extra trip."""
        ...

    async def get_call(self, call_id: str) -> CallRecord | None:
        """The call with this id, if any."""
        ...

    async def end_call(
        self,
        call_id: str,
        ended_at: float,
        reason: str,
        duration_ms: int,
        detail: str | None = None,
    ) -> bool:
        """Record the end of a call that has not ended yet; False otherwise."""
        ...

    async def set_call_upstream(self, call_id: str, upstream_call_id: str) -> None:
        """The platform's own id for the call (its session, web call or bridge call)."""
        ...

    async def set_call_outcome(self, call_id: str, outcome: str) -> None:
        """The outcome the platform was told (Click2Call: ANSWERED, NOT_ANSWERED, FAILED)."""
        ...

    async def list_calls(
        self,
        device_id: str | None = None,
        *,
        end_reason: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[CallRecord]:
        """Calls, oldest first; optionally of one device, with one end reason, or started
        in [since, until)."""
        ...

    async def count_calls_since(self, device_id: str, since: float) -> tuple[int, float | None]:
        """How many calls the device started after `since`, and the oldest such start."""
        ...

    async def add_grant(self, grant: HeldGrant, *, keep_since: float) -> None:
        """Store a held grant, forgetting this device's grants that expired before `keep_since`."""
        ...

    async def get_grant(self, call_id: str) -> HeldGrant | None:
        """The held grant with this call id, if it is still held."""
        ...

    async def count_grants_since(self, device_id: str, since: float) -> tuple[int, float | None]:
        """How many grants the device was given after `since`, and the oldest such."""
        ...

    async def use_grant(self, device_id: str, call_id: str, trigger: str, now: float) -> bool:
        """Turn this device's held grant into a call started `now`, atomically; False if there
        is no such grant (already used, forgotten, or another device's)."""
        ...

    async def delete_grants(self, device_id: str) -> list[HeldGrant]:
        """Forget every held grant of a device; returns them."""
        ...

    async def list_open_calls(self, device_id: str) -> list[CallRecord]:
        """The device's calls that have not ended, oldest first."""
        ...

    async def add_livekit_event(self, event: LiveKitEventRecord) -> bool:
        """Record a webhook event; False if its id is already recorded (a duplicate)."""
        ...

    async def forget_livekit_event(self, event_id: str) -> None:
        """Drop a recorded event, so that LiveKit's retry of it is handled again."""
        ...

    async def purge_livekit_events(self, before: float) -> int:
        """Forget events received before `before`; returns how many."""
        ...

    async def list_livekit_events(self, room: str | None = None) -> list[LiveKitEventRecord]:
        """Recorded events in the order they were received, optionally of one room."""
        ...

    async def aclose(self) -> None:
        """Release the database; safe to call twice."""
        ...


class Session(Protocol):
    """Statements on one connection; SQL uses `?` placeholders whatever the dialect."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """The first row of a query, if any."""
        ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Every row of a query."""
        ...


class Database(Protocol):
    """A connection pool of one dialect, translating its driver's errors to `StorageError`s."""

    @property
    def dialect(self) -> Dialect:
        """Which SQL the database speaks."""
        ...

    def session(self) -> AbstractAsyncContextManager[Session]:
        """A connection whose statements each commit on their own."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[Session]:
        """A connection in a write transaction: committed on exit, rolled back on error."""
        ...

    async def run(self, unit: Unit[T]) -> T:
        """Run a unit of work in a transaction on the database's own thread (units.py)."""
        ...

    @property
    def units(self) -> UnitRunner:
        """The runner of `run`, with its counters."""
        ...

    async def aclose(self) -> None:
        """Close every connection; safe to call twice."""
        ...
