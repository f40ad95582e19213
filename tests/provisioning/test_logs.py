"""The backend's log format: context fields readable and escaped, floods capped and counted."""

from __future__ import annotations

import logging

import pytest

from appliance.status.redact import JWT_MASK, RedactingFilter
from provisioning.logs import (
    AUDIT_LOGGER,
    ContextFormatter,
    FloodFilter,
    configure_logging,
    printable,
)

pytestmark = pytest.mark.unit


def record(msg: str = "request refused", **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("provisioning.http", logging.INFO, __file__, 1, msg, (), None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_context_is_rendered_sorted_and_escaped() -> None:
    line = ContextFormatter("%(message)s").format(
        record(path="/v1/calls", error_code="bad_request", device_id="d-\x1b[2J x", none=None)
    )
    assert line == (
        'request refused device_id="d-\\x1b[2J x" error_code=bad_request path=/v1/calls'
    )


def test_printable_escapes_and_cuts() -> None:
    assert printable("ok") == "ok"
    assert printable("a\nb\u202ec") == "a\\nb\\u202ec"
    assert printable("x" * 300, limit=10) == "x" * 10 + "…"
    assert printable("\udcff") == "\\udcff"


def test_flood_filter_caps_each_message_and_counts_what_it_dropped() -> None:
    now = [0.0]
    flood = FloodFilter(burst=3, window_s=10, clock=lambda: now[0])
    passed = [flood.filter(record()) for _ in range(10)]
    assert passed == [True] * 3 + [False] * 7
    assert flood.filter(record("another message"))  # counted apart
    now[0] = 10.0
    resumed = record()
    assert flood.filter(resumed)
    assert resumed.suppressed == 7


def test_the_audit_of_what_happened_is_never_capped() -> None:
    flood = FloodFilter(burst=3, window_s=10, clock=lambda: 0.0)
    calls = [record("call started", name=AUDIT_LOGGER) for _ in range(50)]
    assert all(flood.filter(line) for line in calls)
    refusals = [flood.filter(record("request refused")) for _ in range(5)]
    assert refusals == [True] * 3 + [False] * 2


def test_the_backend_handler_masks_secrets_after_counting_floods(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkZXZpY2UtZC0wMTIzIn0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
    try:
        configure_logging(logging.INFO)
        [handler] = root.handlers
        kinds = [type(f) for f in handler.filters]
        assert kinds == [FloodFilter, RedactingFilter], "floods are counted by the static message"
        logging.getLogger("provisioning.test").warning("token %s refused", token)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
    err = capsys.readouterr().err
    assert f"token {JWT_MASK} refused" in err and token not in err
