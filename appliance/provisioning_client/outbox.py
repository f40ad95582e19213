"""The outbox: call reports kept on disk and retried with backoff until the backend has them."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from appliance.aio import AsyncResource, TaskSet, cancel_and_wait
from appliance.backoff import Backoff
from appliance.clock import Clock
from appliance.errors import BackendError, BackendProtocolError, RateLimitedError
from appliance.files import fsync_dir, write_private
from appliance.vocabulary import EndReason, Trigger

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
REJECTED_DIR_NAME = "rejected"
# A failed attempt is a warning on the first try and every WARN_EVERY-th after; debug otherwise.
WARN_EVERY = 10
# Reports are a few hundred bytes; anything much bigger is not one of ours.
MAX_REPORT_BYTES = 64 * 1024
# Settled (acknowledged or refused) reports remembered, so a late duplicate is not sent again.
SETTLED_MEMORY = 256
_SEQ_DIGITS = 12
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class ReportKind(StrEnum):
    """What a report tells the backend."""

    CALL_STARTED = "call_started"  # a held call grant was turned into a call
    CALL_ENDED = "call_ended"


# The payload fields of each kind, and their types.
_FIELDS: dict[ReportKind, dict[str, type]] = {
    ReportKind.CALL_STARTED: {"trigger": str},
    ReportKind.CALL_ENDED: {"reason": str, "duration_ms": int},
}
# Fields a report of each kind may have too.
_OPTIONAL: dict[ReportKind, dict[str, type]] = {
    ReportKind.CALL_STARTED: {},
    ReportKind.CALL_ENDED: {"detail": str},  # the platform's own reason (platform_ended)
}
# The longest `detail` kept (the backend refuses longer).
MAX_DETAIL_CHARS = 200


@dataclass(frozen=True)
class Report:
    """One fact about a call the backend must learn; checked against the vocabularies when made."""

    kind: ReportKind
    call_id: str
    created_at: float  # wall time, Unix seconds
    payload: Mapping[str, str | int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ReportKind(self.kind))
        if not isinstance(self.call_id, str) or not self.call_id:
            raise ValueError("call_id must be a non-empty string")
        if isinstance(self.created_at, bool) or not isinstance(self.created_at, int | float):
            raise ValueError("created_at must be a number")
        if not math.isfinite(self.created_at):
            raise ValueError("created_at must be finite")
        fields = _FIELDS[self.kind]
        optional = _OPTIONAL[self.kind]
        if not set(fields) <= set(self.payload) <= set(fields) | set(optional):
            raise ValueError(f"a {self.kind} report has exactly the fields {sorted(fields)}")
        payload: dict[str, str | int] = {}
        for name, kind in {**fields, **optional}.items():
            if name not in self.payload:
                continue
            value = self.payload[name]
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ValueError(f"{name} must be {kind.__name__}")
            payload[name] = str(value) if isinstance(value, str) else int(value)
        if self.kind is ReportKind.CALL_STARTED:
            Trigger(str(payload["trigger"]))
        else:
            EndReason(str(payload["reason"]))
            if int(payload["duration_ms"]) < 0:
                raise ValueError("duration_ms must not be negative")
            detail = str(payload.get("detail", ""))
            if len(detail) > MAX_DETAIL_CHARS or not detail.isprintable():
                raise ValueError("detail must be printable and short")
        object.__setattr__(self, "payload", MappingProxyType(payload))

    @classmethod
    def call_started(cls, call_id: str, trigger: Trigger, *, created_at: float) -> Report:
        """A held call grant turned into a call started by `trigger`."""
        return cls(ReportKind.CALL_STARTED, call_id, created_at, {"trigger": Trigger(trigger)})

    @classmethod
    def call_ended(
        cls,
        call_id: str,
        reason: EndReason,
        duration_ms: int,
        *,
        created_at: float,
        detail: str | None = None,
    ) -> Report:
        """How a call ended and how long it was connected (and the platform's reason)."""
        payload: dict[str, str | int] = {"reason": EndReason(reason), "duration_ms": duration_ms}
        if detail:
            payload["detail"] = detail
        return cls(ReportKind.CALL_ENDED, call_id, created_at, payload)

    @property
    def trigger(self) -> Trigger:
        """What started the call (`call_started` reports only)."""
        return Trigger(str(self._field(ReportKind.CALL_STARTED, "trigger")))

    @property
    def reason(self) -> EndReason:
        """Why the call ended (`call_ended` reports only)."""
        return EndReason(str(self._field(ReportKind.CALL_ENDED, "reason")))

    @property
    def detail(self) -> str | None:
        """The platform's own reason for the end, if it gave one (`call_ended` only)."""
        value = self.payload.get("detail")
        return None if value is None else str(value)

    @property
    def duration_ms(self) -> int:
        """How long the call was connected (`call_ended` reports only)."""
        return int(self._field(ReportKind.CALL_ENDED, "duration_ms"))

    def _field(self, kind: ReportKind, name: str) -> str | int:
        if self.kind is not kind:
            raise AttributeError(f"a {self.kind} report has no {name}")
        return self.payload[name]

    def to_json(self) -> bytes:
        """The file's contents."""
        document: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "kind": self.kind.value,
            "call_id": self.call_id,
            "created_at": self.created_at,
            **self.payload,
        }
        return json.dumps(document, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Report:
        """Parse a file written by `to_json`; ValueError for anything else."""
        document = json.loads(data)
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        if document.get("v") != FORMAT_VERSION:
            raise ValueError(f"unknown format version {document.get('v')!r}")
        kind = ReportKind(str(document.get("kind")))
        header = {"v", "kind", "call_id", "created_at"}
        fields = set(_FIELDS[kind])
        if not header | fields <= set(document) <= header | fields | set(_OPTIONAL[kind]):
            raise ValueError(f"unexpected fields {sorted(set(document) - header)}")
        payload = {name: document[name] for name in set(document) - header}
        return cls(kind, document["call_id"], document["created_at"], payload)


Send = Callable[[Report], Awaitable[None]]


class Outbox(AsyncResource):
    """Reports written whole to `directory`, sent in order by one task until acknowledged.

    The directory is the queue: what a previous run (or a power cut) left is sent first.
    A report the backend refuses for good is moved to `directory/rejected/`, never dropped.
    """

    def __init__(
        self,
        directory: Path,
        *,
        send: Send,
        clock: Clock,
        backoff: Backoff | None = None,
    ) -> None:
        self._directory = directory
        self._rejected = directory / REJECTED_DIR_NAME
        self._send = send
        self._clock = clock
        self._backoff = backoff or Backoff(initial_s=1.0, max_s=60.0)
        self._tasks = TaskSet()
        self._started = False
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        # File name -> its report, or why it is unreadable; loaded from the directory on first use.
        self._entries: dict[str, Report | str] | None = None
        self._settled: dict[tuple[ReportKind, str], None] = {}
        self._next_seq = 1

    @property
    def directory(self) -> Path:
        """Where the pending reports are."""
        return self._directory

    async def start(self) -> None:
        """Pick up what a previous run left and start sending."""
        if self._started:
            raise RuntimeError("outbox already started")
        self._started = True
        self._load()
        self._tasks.spawn(self._drain(), name="outbox-drain")

    async def aclose(self) -> None:
        """Stop sending; what is pending stays on disk for the next run."""
        await self._tasks.aclose()

    def put(self, report: Report) -> bool:
        """Store `report` durably, then wake the sender; False if it duplicates one already here.

        A second report of the same kind for the same call is dropped (the first wins, as on
        the backend). Raises OSError if the report cannot be written.
        """
        entries = self._load()
        key = (report.kind, report.call_id)
        if key in self._settled or any(
            isinstance(r, Report) and (r.kind, r.call_id) == key for r in entries.values()
        ):
            logger.info(
                "duplicate %s report ignored: the first one stands",
                report.kind.value,
                extra={"CALL_ID": report.call_id},
            )
            return False
        name = f"{self._next_seq:0{_SEQ_DIGITS}d}-{report.kind.value}-{_safe(report.call_id)}.json"
        write_private(self._directory / name, report.to_json())
        self._next_seq += 1
        entries[name] = report
        self._empty.clear()
        self._wake.set()
        return True

    def kick(self) -> None:
        """Retry now (e.g. the backend is seen to be back); a Retry-After still holds."""
        self._wake.set()

    def pending(self) -> list[Report]:
        """The readable reports waiting to be sent, oldest first."""
        entries = self._load()
        return [r for _, r in sorted(entries.items()) if isinstance(r, Report)]

    async def drained(self) -> None:
        """Return once nothing is pending; never while the backend is down (bound it)."""
        self._load()
        await self._empty.wait()

    # -- the queue on disk ---------------------------------------------------------------------

    def _load(self) -> dict[str, Report | str]:
        if self._entries is not None:
            return self._entries
        entries: dict[str, Report | str] = {}
        highest = 0
        if self._directory.is_dir():
            for path in self._directory.iterdir():
                if path.name.startswith(".") or not path.is_file():
                    continue
                entries[path.name] = _read(path)
                highest = max(highest, _seq_of(path.name))
        if self._rejected.is_dir():
            highest = max([highest, *(_seq_of(p.name) for p in self._rejected.iterdir())])
        self._entries = entries
        self._next_seq = highest + 1
        if not entries:
            self._empty.set()
        return entries

    def _settle(self, name: str, report: Report | None) -> None:
        entries = self._load()
        entries.pop(name, None)
        if report is not None:
            self._settled[(report.kind, report.call_id)] = None
            while len(self._settled) > SETTLED_MEMORY:
                del self._settled[next(iter(self._settled))]
        if not entries:
            self._empty.set()

    def _discard_unfinished_writes(self) -> None:
        # write_private's temporary files: a put that never returned, so nobody relied on it.
        if not self._directory.is_dir():
            return
        for path in self._directory.glob(".*.tmp"):
            logger.warning("discarding an unfinished report write: %s", path.name)
            path.unlink(missing_ok=True)

    def _reject(self, name: str, report: Report | None, why: str) -> None:
        self._settle(name, report)
        source = self._directory / name
        target = self._rejected / name
        try:
            self._rejected.mkdir(mode=0o700, parents=True, exist_ok=True)
            suffix = 1
            while target.exists():
                target = self._rejected / f"{name}.{suffix}"
                suffix += 1
            os.replace(source, target)
            fsync_dir(self._rejected)
            fsync_dir(self._directory)
        except OSError as exc:
            logger.error("could not move %s to %s: %s", name, self._rejected, exc)
        if report is None:
            logger.error("unreadable report %s moved to %s: %s", name, target, why)
            return
        logger.error(
            "%s report for call %s not delivered, kept in %s: %s",
            report.kind.value,
            report.call_id,
            target,
            why,
            extra={"CALL_ID": report.call_id},
        )

    def _acknowledged(self, name: str, report: Report, attempts: int) -> None:
        self._settle(name, report)
        try:
            (self._directory / name).unlink(missing_ok=True)
        except OSError as exc:
            # The backend has it; a copy left behind is sent again and answered the same.
            logger.error("could not remove the sent report %s: %s", name, exc)
        logger.info(
            "%s report acknowledged after %d attempt(s)",
            report.kind.value,
            attempts,
            extra={"CALL_ID": report.call_id},
        )

    # -- sending -------------------------------------------------------------------------------

    async def _drain(self) -> None:
        self._discard_unfinished_writes()
        while True:
            self._wake.clear()
            entries = self._load()
            if not entries:
                await self._wake.wait()
                continue
            name = min(entries)
            report = entries[name]
            if isinstance(report, str):
                self._reject(name, None, f"not a readable report: {report}")
                continue
            await self._deliver(name, report)

    async def _deliver(self, name: str, report: Report) -> None:
        attempts = 0
        while True:
            attempts += 1
            self._wake.clear()
            floor = 0.0
            try:
                await self._send(report)
            except BackendProtocolError as exc:
                self._reject(name, report, f"refused by the backend: {exc}")
                return
            except RateLimitedError as exc:
                floor = exc.retry_after_s or 0.0
                failure: Exception = exc
            except BackendError as exc:  # unreachable, or credentials (a clock or key to fix)
                failure = exc
            except Exception as exc:
                # Not the backend's answer but our bug: keep the report and keep trying.
                failure = exc
            else:
                self._backoff.reset()
                self._acknowledged(name, report, attempts)
                return
            delay = self._backoff.next_delay(floor)
            self._log_failure(report, attempts, delay, failure)
            await self._pause(delay, floor)

    def _log_failure(self, report: Report, attempts: int, delay: float, exc: Exception) -> None:
        level = logging.WARNING if attempts == 1 or attempts % WARN_EVERY == 0 else logging.DEBUG
        unexpected = not isinstance(exc, BackendError)
        logger.log(
            logging.ERROR if unexpected else level,
            "%s report not delivered (attempt %d, retrying in %.1f s): %s",
            report.kind.value,
            attempts,
            delay,
            exc,
            exc_info=exc if unexpected else None,
            extra={"CALL_ID": report.call_id},
        )

    async def _pause(self, delay: float, floor: float) -> None:
        """Wait `delay` on the clock; a wake-up ends it early, but never before `floor`."""
        start = self._clock.monotonic()
        deadline = start + delay
        while (remaining := deadline - self._clock.monotonic()) > 0:
            if await self._sleep_or_wake(remaining):
                self._wake.clear()
                deadline = min(deadline, start + floor)

    async def _sleep_or_wake(self, seconds: float) -> bool:
        waker = asyncio.create_task(self._wake.wait(), name="outbox-wake")
        sleeper = asyncio.create_task(self._clock.sleep(seconds), name="outbox-sleep")
        try:
            await asyncio.wait({waker, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(waker, sleeper)
        return waker.done() and not waker.cancelled()


def _read(path: Path) -> Report | str:
    """The report in `path`, or why there is none (a partial write from old firmware, junk)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_REPORT_BYTES + 1)
        if len(data) > MAX_REPORT_BYTES:
            return f"larger than {MAX_REPORT_BYTES} bytes"
        return Report.from_json(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"


def _seq_of(name: str) -> int:
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def _safe(call_id: str) -> str:
    return _UNSAFE.sub("_", call_id)[:64]
