"""The console's "Join call" button: a live call's operator page, with a token minted for the
signed-in admin, from a read-write session only; an ended call has no button and is refused."""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from provisioning.http import BackendServer
from provisioning.tokens import OPERATOR_ATTRIBUTE, OPERATOR_ROLE

from .admin_fixtures import admin_db, admin_tokens, database_url, read_token, write_token
from .conftest import Api, TestDevice
from .test_console import Browser, browser

pytestmark = pytest.mark.integration
__all__ = ["admin_db", "admin_tokens", "browser", "database_url", "read_token", "write_token"]


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return claims


def _join_forms(page: str) -> list[str]:
    return re.findall(
        r'<form method=post action="/console/calls/([^"/]+)/join" target=_blank>', page
    )


async def test_an_admin_joins_a_live_call_from_the_calls_page(
    browser: Browser, server: BackendServer, api: Api, enrolled: TestDevice, write_token: str
) -> None:
    live = (await api.start_call(enrolled)).json()["call_id"]
    ended = (await api.start_call(enrolled)).json()["call_id"]
    done = await api.send(
        "POST", f"/v1/calls/{ended}/end", enrolled, {"reason": "user", "duration_ms": 1000}
    )
    assert done.status_code == 200, done.text
    await browser.sign_in(write_token)
    page = await browser.get("/console/calls")
    assert _join_forms(page.text) == [live]  # the ended call has none

    csrf = await browser.csrf()
    joined = await browser.post(f"/console/calls/{live}/join", {"csrf": csrf})
    assert joined.status_code == 303
    assert joined.headers["Cache-Control"] == "no-store"
    location = urlsplit(joined.headers["Location"])
    assert location.path == "/operator" and not location.query  # credentials only in the fragment
    fragment = parse_qs(location.fragment)
    claims = _claims(fragment["token"][0])
    assert fragment["url"] == [server.config.livekit.url]
    assert claims["video"]["room"] == f"call-{live}" and claims["sub"].startswith("operator-")
    assert claims["name"] == "token:ops"  # the admin is the operator
    assert claims["attributes"] == {OPERATOR_ATTRIBUTE: OPERATOR_ROLE}

    refused = await browser.post(f"/console/calls/{ended}/join", {"csrf": csrf})
    assert refused.status_code == 409 and "has ended" in refused.text
    forged = await browser.post(f"/console/calls/{live}/join", {"csrf": csrf[:-1]})
    assert forged.status_code == 403 and "Location" not in forged.headers


async def test_a_read_only_session_has_no_button_and_cannot_join(
    browser: Browser, server: BackendServer, api: Api, enrolled: TestDevice, read_token: str
) -> None:
    live = (await api.start_call(enrolled)).json()["call_id"]
    await browser.sign_in(read_token)
    page = await browser.get("/console/calls")
    assert live in page.text and _join_forms(page.text) == []
    refused = await browser.post(f"/console/calls/{live}/join", {"csrf": await browser.csrf()})
    assert refused.status_code == 403 and "may only read" in refused.text


async def test_a_groups_calls_ring_people_first_from_the_console_form(
    browser: Browser, server: BackendServer, write_token: str
) -> None:
    await browser.sign_in(write_token)
    csrf = await browser.csrf()
    form = {"csrf": csrf, "group": "desk", "ring_timeout_s": "45", "ring_on_no_answer": "end"}
    saved = await browser.post("/console/groups", form)
    assert saved.status_code == 303, saved.text
    rings = {"ring_operators": {"timeout_s": 45.0, "on_no_answer": "end"}}
    assert await server.core.list_groups() == {"desk": rings}
    page = (await browser.get("/console/groups")).text  # the form shows what is set
    assert 'name="ring_timeout_s" type=number step=any min=5 max=600 value="45.0"' in page
    assert '<option value="end" selected>end the call</option>' in page
    switched_off = await browser.post(
        "/console/groups", {"csrf": csrf, "group": "desk", "ring_enabled": "off"}
    )
    assert switched_off.status_code == 303
    assert await server.core.list_groups() == {"desk": {"ring_operators": {"enabled": False}}}
    refused = await browser.post(
        "/console/groups", {"csrf": csrf, "group": "desk", "ring_timeout_s": "2"}
    )
    assert refused.status_code == 400 and "ring_operators.timeout_s" in refused.text


async def test_a_call_in_a_hosted_platforms_room_has_no_button_and_is_refused(
    browser: Browser, server: BackendServer, api: Api, enrolled: TestDevice, write_token: str
) -> None:
    live = (await api.start_call(enrolled)).json()["call_id"]
    # The device is moved to a hosted platform mid-call: its room is the platform's now as far
    # as the backend can tell, and no token for the fleet's server would let anyone into it.
    await server.core.set_device_settings(
        enrolled.device_id, {"provider": {"kind": "vatel", "agent_id": "a-1"}}, actor="test"
    )
    await browser.sign_in(write_token)
    page = await browser.get("/console/calls")
    assert live in page.text and _join_forms(page.text) == []
    refused = await browser.post(f"/console/calls/{live}/join", {"csrf": await browser.csrf()})
    assert refused.status_code == 409 and "hosted platform" in refused.text
