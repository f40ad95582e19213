"""The call marker: a file that says a call is on, so a daemon that died in it reports its end."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from appliance.clock import Clock
from appliance.files import write_private
from appliance.provisioning_client.outbox import Outbox, Report
from appliance.vocabulary import EndReason, Trigger

logger = logging.getLogger(__name__)

MARKER_FILE_NAME = "current_call.json"
UNREADABLE_MARKER_NAME = "current_call.unreadable.json"
MAX_MARKER_BYTES = 4096


@dataclass(frozen=True)
class _Marker:
    call_id: str
    trigger: str
    started_at: float  # wall time, Unix seconds
    last_alive: float

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "call_id": self.call_id,
                "trigger": self.trigger,
                "started_at": self.started_at,
                "last_alive": self.last_alive,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> _Marker:
        document = json.loads(data)
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        call_id, trigger = document.get("call_id"), document.get("trigger")
        if not isinstance(call_id, str) or not call_id or not isinstance(trigger, str):
            raise ValueError("call_id and trigger must be strings")
        return cls(call_id, trigger, _time(document, "started_at"), _time(document, "last_alive"))


def _time(document: dict[str, object], key: str) -> float:
    value = document.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number")
    return float(value)


class CallMarker:
    """`state_dir/current_call.json` while a call is connected: {call_id, trigger, started_at,
    last_alive}. Writing it never fails a call: an error is logged and the call goes on."""

    def __init__(self, state_dir: Path, *, clock: Clock) -> None:
        self._path = state_dir / MARKER_FILE_NAME
        self._clock = clock
        self._current: _Marker | None = None

    @property
    def path(self) -> Path:
        """The marker file."""
        return self._path

    def begin(self, call_id: str, trigger: Trigger) -> None:
        """Mark `call_id` as connected now."""
        now = self._clock.time()
        self._current = _Marker(call_id, str(Trigger(trigger)), now, now)
        self._write()

    def touch(self) -> None:
        """Record that the call is still on (call it every few seconds); no call, no write."""
        if self._current is None:
            return
        current = self._current
        self._current = _Marker(
            current.call_id, current.trigger, current.started_at, self._clock.time()
        )
        self._write()

    def clear(self) -> None:
        """Remove the marker; call it once the call's end is in the outbox."""
        self._current = None
        try:
            self._path.unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("could not remove the call marker %s: %s", self._path, exc)

    def recover(self, outbox: Outbox) -> Report | None:
        """At start-up: if a marker was left (the daemon died mid-call), put the call's end
        (`device_restarted`, connected until the marker's last_alive) and clear it.

        Returns the report put (None without a marker, or if the outbox already had that
        call's end). Raises OSError if the outbox cannot store it; the marker then stays.
        """
        try:
            with self._path.open("rb") as f:
                data = f.read(MAX_MARKER_BYTES + 1)
        except FileNotFoundError:
            return None
        try:
            if len(data) > MAX_MARKER_BYTES:
                raise ValueError(f"larger than {MAX_MARKER_BYTES} bytes")
            marker = _Marker.from_json(data)
        except ValueError as exc:
            aside = self._path.with_name(UNREADABLE_MARKER_NAME)
            logger.error(
                "unreadable call marker moved to %s; that call's end is not reported: %s",
                aside,
                exc,
            )
            os.replace(self._path, aside)
            return None
        duration_ms = max(0, int((marker.last_alive - marker.started_at) * 1000))
        report = Report.call_ended(
            marker.call_id,
            EndReason.DEVICE_RESTARTED,
            duration_ms,
            created_at=self._clock.time(),
        )
        stored = outbox.put(report)
        if stored:
            logger.warning(
                "the daemon stopped during a call; its end is reported as %s (%d ms)",
                EndReason.DEVICE_RESTARTED.value,
                duration_ms,
                extra={"CALL_ID": marker.call_id},
            )
        self.clear()
        return report if stored else None

    def _write(self) -> None:
        assert self._current is not None
        try:
            write_private(self._path, self._current.to_json())
        except OSError as exc:
            logger.warning(
                "could not write the call marker %s: %s",
                self._path,
                exc,
                extra={"CALL_ID": self._current.call_id},
            )
