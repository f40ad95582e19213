"""Masks secrets in log records (JWTs, PEM blocks, long keys, URL passwords) on every handler.

Dependency-free on purpose: the backend installs the same filter on its own handler.
"""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Callable
from typing import TextIO, TypeVar

JWT_MASK = "[redacted jwt]"
PEM_MASK = "[redacted pem]"
KEY_MASK = "[redacted key]"
PASSWORD_MASK = "[redacted password]"

# A JWT, or any piece of one: a base64url JSON object (`{"` encodes as `eyJ`) and the
# segments that follow it. A token cut short in a log line is still masked.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){0,2}")
# A PEM block, or its start when the end was cut off.
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(?:-----END [A-Z0-9 ]+-----|\Z)", re.DOTALL)
# user:password@ in a URL (a database DSN, say).
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@")
# A run of base64 / base64url / hex characters; `_is_key` decides whether it is a secret.
_RUN = re.compile(r"[A-Za-z0-9+/_-]{32,}={0,2}")
_HEX = re.compile(r"[0-9a-fA-F]+")
_MIN_KEY_CHARS = 32

# LogRecord attributes that are never secrets (and that tools rely on as they are).
_PLAIN_ATTRIBUTES = frozenset(
    {"name", "levelname", "pathname", "filename", "module", "funcName", "threadName"}
    | {"processName", "taskName", "msg", "exc_text", "stack_info"}  # the last three: above
)
_FORMATTER = logging.Formatter()

H = TypeVar("H", bound=logging.Handler)


def _is_key(run: str) -> bool:
    """Whether a long base64/hex run looks like key material rather than a path or a name.

    Hex of 32+ digits is a key. Otherwise it takes upper and lower case letters and digits,
    which random base64 of 32+ characters has with near certainty and identifiers, words
    and paths almost never do. Absolute paths and URLs are judged piece by piece, so a
    call id (`c-` and 16 hex digits) inside one stays readable.
    """
    core = run.rstrip("=")
    if _HEX.fullmatch(core):
        return True
    if core.startswith("/") or "//" in core:
        return any(len(piece) >= _MIN_KEY_CHARS and _is_key(piece) for piece in core.split("/"))
    return (
        any(c.isdigit() for c in core)
        and any(c.isupper() for c in core)
        and any(c.islower() for c in core)
    )


def _mask_run(match: re.Match[str]) -> str:
    run = match.group(0)
    return KEY_MASK if _is_key(run) else run


def redact(text: str) -> str:
    """`text` with every JWT, PEM block, URL password and long key replaced by a mask."""
    if len(text) < _MIN_KEY_CHARS and "://" not in text:
        return text  # too short to hold any of them
    text = _PEM.sub(PEM_MASK, text)
    text = _JWT.sub(JWT_MASK, text)
    text = _URL_PASSWORD.sub(rf"\g<head>{PASSWORD_MASK}@", text)
    return _RUN.sub(_mask_run, text)


def redact_record(record: logging.LogRecord) -> None:
    """Rewrite `record` in place so that no part a handler may emit holds a secret.

    The message is rendered and stored without arguments when it (or its arguments) held
    one; a traceback is rendered into `exc_text`, masked, and `exc_info` dropped when it
    held one (the journal handler would otherwise send the exception's repr as a field).
    """
    try:
        message = record.getMessage()
    except Exception:  # bad arguments: logging itself would print them raw in handleError
        message = f"{record.msg!s} (arguments {record.args!r})"
        record.args = ()
        record.msg = message
    clean = redact(message)
    if clean != message or (record.args and redact(repr(record.args)) != repr(record.args)):
        record.msg, record.args = clean, ()
    if record.exc_info:
        if not record.exc_text:
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        clean = redact(record.exc_text)
        if clean != record.exc_text:
            record.exc_text, record.exc_info = clean, None
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    for key, value in list(vars(record).items()):
        if key in _PLAIN_ATTRIBUTES or not isinstance(value, str):
            continue
        if (clean := redact(value)) != value:
            setattr(record, key, clean)


class RedactingFilter(logging.Filter):
    """A handler filter that masks secrets in every record (see `redact_record`); drops none."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            redact_record(record)
        except Exception:
            # Never let a record through unchecked, and never break the caller's logging.
            record.msg, record.args = "log record withheld: redaction failed", ()
            record.exc_info = record.exc_text = record.stack_info = None
        return True


def install(handler: H) -> H:
    """Add the redaction filter to `handler` (once, and last); return the handler.

    The handler's `handleError` is wrapped too: when emitting fails, logging prints the
    traceback of the exception being handled (its chain, message and arguments included)
    to stderr, which for a service is the journal again.
    """
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RedactingFilter())
        setattr(handler, "handleError", _redacting(handler.handleError))  # noqa: B010
    return handler


def _redacting(handle_error: Callable[[logging.LogRecord], None]) -> Callable[..., None]:
    def redacted_handle_error(record: logging.LogRecord) -> None:
        stderr = sys.stderr
        if not (logging.raiseExceptions and stderr):
            return
        buffer = io.StringIO()
        sys.stderr = buffer
        try:
            handle_error(record)
        finally:
            sys.stderr = stderr
        stderr.write(redact(buffer.getvalue()))

    return redacted_handle_error


def install_everywhere() -> None:
    """Put the filter on every handler there is now: the root logger's, any other logger's
    (a library such as the LiveKit SDK could add its own), and logging's last resort."""
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            install(handler)
    if logging.lastResort is not None:
        install(logging.lastResort)


class RedactingStream(io.TextIOBase):
    """A text stream that masks secrets line by line before they reach `stream` (for a
    process whose stderr is not a log handler's: a call worker's, say)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._stream.write(redact(line) + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._stream.write(redact(self._pending))
            self._pending = ""
        self._stream.flush()

    def fileno(self) -> int:
        return self._stream.fileno()
