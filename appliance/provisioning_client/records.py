"""The supervisor's call records: a marker while a call is connected, reports via the outbox."""

from __future__ import annotations

import logging

from appliance.clock import Clock
from appliance.provisioning_client.call_marker import CallMarker
from appliance.provisioning_client.client import ProvisioningClient
from appliance.provisioning_client.outbox import Outbox, Report, ReportKind
from appliance.vocabulary import EndReason, Trigger

logger = logging.getLogger(__name__)


class DurableCallRecords:
    """What the backend must learn about calls, kept on disk until it has: never lost."""

    def __init__(self, outbox: Outbox, marker: CallMarker, *, clock: Clock) -> None:
        self._outbox = outbox
        self._marker = marker
        self._clock = clock

    def started(self, call_id: str, trigger: str, *, held: bool) -> None:
        """Mark the call connected; a held grant's call is reported as started."""
        self._marker.begin(call_id, Trigger(trigger))
        if held:
            self._put(Report.call_started(call_id, Trigger(trigger), created_at=self._clock.time()))

    def alive(self) -> None:
        """The call goes on."""
        self._marker.touch()

    def ended(
        self, call_id: str, reason: EndReason, duration_ms: int, detail: str | None = None
    ) -> None:
        """Queue the end report, then drop the marker."""
        report = Report.call_ended(
            call_id, reason, duration_ms, created_at=self._clock.time(), detail=detail
        )
        if self._put(report):
            self._marker.clear()

    def backend_back(self) -> None:
        """The backend answers again: send what waits now, not at the next backoff."""
        self._outbox.kick()

    def _put(self, report: Report) -> bool:
        try:
            self._outbox.put(report)
        except OSError as exc:
            # The marker stays: the next start reports the end from it.
            logger.error(
                "could not store the call's %s report: %s",
                report.kind.value,
                exc,
                extra={"CALL_ID": report.call_id},
            )
            return False
        return True


async def send_report(client: ProvisioningClient, report: Report) -> None:
    """Deliver one report through the provisioning client (the outbox's `send`)."""
    if report.kind is ReportKind.CALL_STARTED:
        await client.start_held_call(report.call_id, report.trigger)
    else:
        await client.end_call(
            report.call_id, report.reason.value, report.duration_ms, detail=report.detail
        )
