"""The redaction filter: JWTs, PEM blocks, keys and URL passwords never reach a log handler."""

from __future__ import annotations

import datetime
import io
import logging
import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from livekit import api

from appliance.errors import CallError
from appliance.settings import LoggingSettings
from appliance.status.journal import setup_logging
from appliance.status.redact import (
    JWT_MASK,
    KEY_MASK,
    PEM_MASK,
    RedactingFilter,
    RedactingStream,
    install,
    redact,
)

pytestmark = pytest.mark.unit

DEVICE_ID = "d-0123456789abcdef"
CALL_ID = "c-fedcba9876543210"
ROOM = f"call-{CALL_ID}"
API_SECRET = secrets.token_urlsafe(36)


def _token() -> str:
    return (
        api.AccessToken("APIkey123456", API_SECRET)
        .with_identity(f"device-{DEVICE_ID}")
        .with_ttl(datetime.timedelta(minutes=10))
        .with_grants(api.VideoGrants(room_join=True, room=ROOM))
        .to_jwt()
    )


def _leaks(text: str, secret: str) -> list[str]:
    """Every 20+ character piece of `secret` (split at its dots) that shows in `text`."""
    pieces = [p for p in re.split(r"[.]", secret) if len(p) >= 20]
    found = [p for p in pieces if p in text]
    # Any 20-character window of the secret, too: a line cut or a different split.
    found += [secret[i : i + 20] for i in range(len(secret) - 19) if secret[i : i + 20] in text]
    return found


class _Capture(logging.Handler):
    """Formats each record as a stderr handler would, filter installed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.stream = io.StringIO()
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.stream.write(self.format(record) + "\n")

    @property
    def text(self) -> str:
        return self.stream.getvalue()


@pytest.fixture
def capture() -> Iterator[_Capture]:
    handler = install(_Capture())
    logger = logging.getLogger("test.redact")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def test_a_jwt_in_the_message_is_masked(capture: _Capture) -> None:
    token = _token()
    message = f"invalid token: {token}, error: expired"  # as a library formats its own
    logging.getLogger("test.redact").warning(message)
    assert _leaks(capture.text, token) == []
    assert f"invalid token: {JWT_MASK}, error: expired" in capture.text


def test_a_jwt_in_the_arguments_is_masked(capture: _Capture) -> None:
    token = _token()
    logging.getLogger("test.redact").info("joining %s with %s", ROOM, token)
    assert _leaks(capture.text, token) == []
    assert f"joining {ROOM} with {JWT_MASK}" in capture.text
    record = capture.records[0]
    assert record.args == () and token not in str(record.msg), "nothing raw left on the record"


def test_a_jwt_in_an_exception_message_is_masked(capture: _Capture) -> None:
    token = _token()
    exc = CallError(f"could not join room {ROOM}: 401 Unauthorized - invalid token: {token}")
    logging.getLogger("test.redact").error("call could not connect: %s", exc)
    assert _leaks(capture.text, token) == []
    assert ROOM in capture.text


def test_a_jwt_in_a_traceback_is_masked(capture: _Capture) -> None:
    token = _token()
    try:
        try:
            raise RuntimeError(f"engine: signal failure: invalid token: {token}")
        except RuntimeError as inner:
            raise CallError(f"could not join room {ROOM}: {inner}") from inner
    except CallError:
        logging.getLogger("test.redact").exception("call failed unexpectedly")
    assert _leaks(capture.text, token) == []
    assert "Traceback (most recent call last)" in capture.text
    assert f"RuntimeError: engine: signal failure: invalid token: {JWT_MASK}" in capture.text
    record = capture.records[0]
    assert record.exc_info is None and record.exc_text is not None
    assert token not in record.exc_text


def test_a_stack_and_extra_fields_are_masked(capture: _Capture) -> None:
    token = _token()
    logging.getLogger("test.redact").info(
        "state", extra={"CALL_ID": CALL_ID, "TOKEN": token}, stack_info=True
    )
    record = capture.records[0]
    assert getattr(record, "CALL_ID", None) == CALL_ID
    assert getattr(record, "TOKEN", None) == JWT_MASK
    assert all(_leaks(str(v), token) == [] for v in vars(record).values())


def test_a_truncated_token_is_masked() -> None:
    token = _token()
    cut = token[: len(token) * 2 // 3]
    assert _leaks(redact(f"token {cut}"), token) == []


def test_pem_blocks_api_secrets_hex_keys_and_url_passwords_are_masked() -> None:
    pem = (
        "-----BEGIN PRIVATE KEY-----\n"
        "MC4CAQAwBQYDK2VwBCIEIHcXjVJ5F3m3KZkZ4z+o7u3j1x3Xv5m1J0l0aQ3b9XkR\n"
        "-----END PRIVATE KEY-----"
    )
    assert redact(f"key file:\n{pem}\nend") == f"key file:\n{PEM_MASK}\nend"
    assert redact("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIE") == PEM_MASK
    assert redact(f"api_secret={API_SECRET}") == f"api_secret={KEY_MASK}"
    assert redact(f"secret {'ab12' * 16} used") == f"secret {KEY_MASK} used"
    std_b64 = "q7W+3kZ/9vXc1mN0pL4sT8yR2uB6hJ5gF0dA1eC3xY4="
    assert redact(f"key {std_b64}") == f"key {KEY_MASK}"
    assert (
        redact("postgresql://kiosk:s3cr3t-Pa55@db.example:5432/kiosk")
        == "postgresql://kiosk:[redacted password]@db.example:5432/kiosk"
    )


@pytest.mark.parametrize(
    "text",
    [
        f"device {DEVICE_ID} joined room {ROOM} as device-{DEVICE_ID}",
        f"POST http://127.0.0.1:8080/v1/calls/{CALL_ID}/end 200",
        f"/v1/calls/{CALL_ID}/end/{CALL_ID}/{DEVICE_ID}",
        'File "/work/main/.venv/lib/python3.11/site-packages/livekit/rtc/room.py", line 12',
        "/tmp/pytest-of-root/pytest-12/test_a_listener_whose_task_di0/stack/livekit-api-secret",
        "tests/e2e/test_redaction.py::test_no_token_in_any_log_of_a_refused_call[expired]",
        "PytestUnraisableExceptionWarning: test_button_call_carries_audio_both_ways_and_ends",
        "ws://127.0.0.1:45875/rtc/v1 connect_timeout=5.0 node ND_aBcDeFgHiJkL",
        "call ended (user)\n  trigger 0 ms\n  token 120 ms\n  connected 480 ms",
    ],
)
def test_ids_names_and_paths_are_left_alone(text: str) -> None:
    assert redact(text) == text


def test_arguments_that_do_not_fit_the_message_are_masked_not_printed_raw(
    capture: _Capture,
) -> None:
    token = _token()
    logging.getLogger("test.redact").info("token %d", token)
    assert _leaks(capture.text, token) == []
    assert JWT_MASK in capture.text


def test_the_filter_is_installed_once_and_never_drops_a_record() -> None:
    handler = logging.NullHandler()
    assert install(install(handler)) is handler
    assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "plain %s", ("text",), None)
    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == "plain text" and record.args == ("text",), "clean: untouched"


def test_the_journal_handler_sends_no_secret_in_any_field() -> None:
    from systemd.journal import JournalHandler

    sent: list[tuple[str, dict[str, Any]]] = []

    def sender(MESSAGE: str, /, **fields: Any) -> None:
        sent.append((MESSAGE, fields))

    handler = install(JournalHandler(sender_function=sender))
    logger = logging.getLogger("test.redact.journal")
    logger.addHandler(handler)
    logger.propagate = False
    token = _token()
    try:
        try:
            raise CallError(f"invalid token: {token}")
        except CallError:
            logger.exception("call could not connect: %s", token, extra={"ROOM": ROOM})
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    [(message, fields)] = sent
    assert _leaks(message, token) == []
    assert all(_leaks(str(value), token) == [] for value in fields.values())
    assert fields["ROOM"] == ROOM


def test_a_failing_handler_prints_no_secret_in_its_error_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Broken(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                raise OSError("disk full")
            except OSError:
                self.handleError(record)

    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    logger = logging.getLogger("test.redact.broken")
    logger.addHandler(install(Broken()))
    logger.propagate = False
    token = _token()
    try:
        try:
            raise CallError(f"invalid token: {token}")
        except CallError:
            logger.exception("call could not connect")
    finally:
        logger.handlers.clear()
        logger.propagate = True
    assert "--- Logging error ---" in stderr.getvalue() and "disk full" in stderr.getvalue()
    assert _leaks(stderr.getvalue(), token) == []


def test_livekit_sdk_loggers_have_no_handler_of_their_own_and_reach_ours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from livekit import rtc  # noqa: F401  (the SDK's loggers exist once it is imported)

    for name in ("livekit", "livekit.rtc", "livekit.api", "livekit.rtc.synchronizer"):
        logger = logging.getLogger(name)
        assert logger.handlers == [] and logger.propagate, name
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    try:
        setup_logging(LoggingSettings(level="debug", journal="off"), device_id=DEVICE_ID)
        token = _token()
        logging.getLogger("livekit").error(
            "%s:%s:%s - %s",
            "livekit_ffi::room_apis::server::room",
            355,
            "livekit_ffi::room_apis::server::room",
            f"error while connecting to a room: 401 Unauthorized - invalid token: {token}",
        )
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
    assert "error while connecting to a room" in stderr.getvalue()
    assert _leaks(stderr.getvalue(), token) == []
    assert f"DEVICE_ID={DEVICE_ID}" in stderr.getvalue()


def test_a_stream_masks_each_line_even_when_written_in_pieces() -> None:
    out = io.StringIO()
    stream = RedactingStream(out)
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkZXZpY2UtZC0wMTIzIn0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
    stream.write("invalid token: " + token[:30])
    stream.write(token[30:] + ", error: expired\nsecond line\n")
    stream.write("tail " + token)
    stream.flush()
    text = out.getvalue()
    assert "eyJ" not in text
    assert text.count(JWT_MASK) == 2
    assert "second line\n" in text and text.startswith("invalid token: ")
