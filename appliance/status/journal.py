"""Logging to journald with real fields (DEVICE_ID, CALL_ID, ROOM, STATE) or to stderr, redacted."""

from __future__ import annotations

import logging
from pathlib import Path

from appliance.settings import LoggingSettings
from appliance.status.redact import install, install_everywhere

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
FIELDS = ("DEVICE_ID", "STATE", "ERROR_CODE", "CALL_ID", "ROOM")


class _DeviceFields(logging.Filter):
    """Stamps every record with the device id."""

    def __init__(self, device_id: str) -> None:
        super().__init__()
        self._device_id = device_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "DEVICE_ID"):
            record.DEVICE_ID = self._device_id
        return True


class _FieldsFormatter(logging.Formatter):
    """Plain-text lines that still show the journal fields a record carries."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{k}={getattr(record, k)}" for k in FIELDS if hasattr(record, k))
        return f"{line} [{fields}]" if fields else line


def setup_logging(settings: LoggingSettings, *, device_id: str) -> None:
    """Send the device's logs to the journal when it is there, else to stderr.

    Every handler masks secrets: records of the LiveKit SDK's loggers (`livekit`, which
    adds no handler of its own) propagate to this one.
    """
    root = logging.getLogger()
    root.setLevel(settings.level.upper())
    for old in list(root.handlers):
        root.removeHandler(old)
    use_journal = settings.journal == "on" or (
        settings.journal == "auto" and JOURNAL_SOCKET.exists()
    )
    if use_journal:
        from systemd.journal import JournalHandler

        handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER="kiosk-appliance")
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(_FieldsFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_DeviceFields(device_id))
    root.addHandler(install(handler))
    install_everywhere()
