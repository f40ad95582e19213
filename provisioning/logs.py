"""The backend's log lines: context from `extra=` shown as key=value, escaped, and floods capped."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from appliance.status.redact import install, install_everywhere

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
_MAX_VALUE_CHARS = 200
AUDIT_LOGGER = "provisioning.audit"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def printable(value: object, limit: int = _MAX_VALUE_CHARS) -> str:
    """`value` as text that cannot move a terminal's cursor: non-printables as escapes, cut."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _field(value: object) -> str:
    text = printable(value)
    if not text or any(ch in text for ch in ' "='):
        return '"' + text.replace('"', '\\"') + '"'
    return text


class ContextFormatter(logging.Formatter):
    """The usual line, then each `extra=` field as ` key=value`, sorted by key."""

    def __init__(self, fmt: str = FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = {
            key: value
            for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_") and value is not None
        }
        if not context:
            return line
        fields = " ".join(f"{key}={_field(value)}" for key, value in sorted(context.items()))
        head, newline, rest = line.partition("\n")
        return f"{head} {fields}{newline}{rest}"


class FloodFilter(logging.Filter):
    """At most `burst` lines of one message per `window_s`; the next line says how many were
    dropped (`suppressed=N`), so a flood of bad requests costs bounded log volume.

    Lines of the `exempt` loggers are never dropped: the audit of what happened (calls,
    enrollments) is bounded by what authenticated devices and admins do."""

    def __init__(
        self,
        *,
        burst: int = 20,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        exempt: tuple[str, ...] = (AUDIT_LOGGER,),
    ) -> None:
        super().__init__()
        self._exempt = exempt
        self._burst = burst
        self._window_s = window_s
        self._clock = clock
        self._windows: dict[tuple[str, int, str], tuple[float, int, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name in self._exempt:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        start, count, suppressed = self._windows.get(key, (now, 0, 0))
        if now - start >= self._window_s:
            start, count = now, 0
        if count >= self._burst:
            self._windows[key] = (start, count, suppressed + 1)
            return False
        if suppressed:
            record.suppressed = suppressed
        self._windows[key] = (start, count + 1, 0)
        if len(self._windows) > 1000:  # messages are static; this only guards against misuse
            self._windows.clear()
        return True


def configure_logging(level: int) -> None:
    """One stderr handler with context fields, flood control and secrets masked, for every
    logger (the flood filter first: it counts by the static message, before masking)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ContextFormatter())
    handler.addFilter(FloodFilter())
    logging.basicConfig(level=level, handlers=[install(handler)], force=True)
    install_everywhere()
