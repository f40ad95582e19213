"""The backend's log format: context fields readable and escaped, floods capped and counted."""

from __future__ import annotations

import logging

import pytest

from provisioning.logs import ContextFormatter, FloodFilter, printable

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
