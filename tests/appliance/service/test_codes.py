"""One error catalogue: docs/errors.md, the LED's blink codes and the journal's ERROR_CODE agree."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from appliance.service.codes import CATALOGUE, ErrorCode, code_for_state
from appliance.state import FAULT_STATES, State
from appliance.status.journal import FIELDS
from appliance.status.leds import PATTERNS
from tests.appliance.test_supervisor import Harness, start_harness, stop_harness

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[3] / "docs" / "errors.md"
ROW = re.compile(r"^\| (E\d\d) \| (\w+) \| ([^|]+) \| ([^|]+) \|", re.MULTILINE)


def doc_rows() -> dict[str, tuple[str, int | None, bool, str | None]]:
    """code -> (name, blinks, long lead blink, state) as docs/errors.md's table lists them."""
    rows = {}
    for code, name, led, state in ROW.findall(DOC.read_text()):
        blinks = re.fullmatch(r"(1 long \+ )?(\d+) blinks?", led.strip())
        shown = re.fullmatch(r"`(\w+)`", state.strip())
        rows[code] = (
            name,
            int(blinks.group(2)) if blinks else None,
            bool(blinks and blinks.group(1)),
            shown and shown.group(1),
        )
    return rows


def test_docs_list_exactly_the_catalogue() -> None:
    expected = {
        e.code.value: (e.code.name.lower(), e.blinks, e.lead, e.state.value if e.state else None)
        for e in CATALOGUE.values()
    }
    assert doc_rows() == expected


def code_number(blinks: int, lead: bool) -> int:
    """E0N is N blinks; E9N, a long blink and N (the platform behind the backend)."""
    return 90 + blinks if lead else blinks


def test_every_blink_code_on_the_led_is_a_catalogue_code() -> None:
    for state, pattern in PATTERNS.items():
        code = code_for_state(state)
        if pattern.blinks is None:
            assert code is None, state
            continue
        assert code is not None, f"{state} blinks {pattern.blinks} times but has no code"
        assert (CATALOGUE[code].blinks, CATALOGUE[code].lead) == (pattern.blinks, pattern.lead)
        assert int(code.value[1:]) == pattern.code_number  # E03 is 3 blinks, E93 long + 3


def test_every_fault_state_has_a_code_and_blink_counts_are_unique() -> None:
    assert {s for s in State if code_for_state(s) is not None} == set(FAULT_STATES)
    counts = [(e.blinks, e.lead) for e in CATALOGUE.values() if e.blinks is not None]
    assert len(counts) == len(set(counts))
    for e in CATALOGUE.values():
        if e.blinks is not None:
            assert int(e.code.value[1:]) == code_number(e.blinks, e.lead)
        else:
            assert not e.lead and 11 <= int(e.code.value[1:]) <= 89  # doctor's codes


def test_the_journal_and_stderr_carry_error_code() -> None:
    assert "ERROR_CODE" in FIELDS


@pytest.mark.parametrize("broken", [ErrorCode.BACKEND_UNREACHABLE])
async def test_a_fault_state_line_carries_its_code(
    caplog: pytest.LogCaptureFixture, broken: ErrorCode
) -> None:
    from appliance.errors import BackendUnreachableError

    h: Harness = await start_harness()
    try:
        with caplog.at_level(logging.INFO, logger="appliance.supervisor"):
            h.backend.calls = [BackendUnreachableError("down")]
            h.backend.check_ins = [BackendUnreachableError("down")] * 5
            await h.press()
            assert h.supervisor.state is State.BACKEND_UNREACHABLE
    finally:
        await stop_harness(h)
    lines = [r for r in caplog.records if getattr(r, "STATE", None) == "backend_unreachable"]
    assert lines and all(getattr(r, "ERROR_CODE", None) == broken.value for r in lines)
    ready = [r for r in caplog.records if getattr(r, "STATE", None) == "ready"]
    assert ready and not any(hasattr(r, "ERROR_CODE") for r in ready)
