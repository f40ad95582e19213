"""The operator page in a real browser (Debian's headless Chromium): whichever credentials its
fragment brings, an admin's `#url=…&token=…` or a ring's `#ticket=…`, they leave the address
bar and the history as soon as the page has read them. (Joining a call with it, heard and
hearing, is tests/e2e/test_operator_browser.py.)"""

from __future__ import annotations

import asyncio

import pytest

from provisioning.http import BackendServer
from provisioning.operators import CLIENT_FILE, Operators

from .chromium import Cdp, Page, cdp, chromium, chromium_path
from .conftest import Api, FakeClock, TestDevice

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed"),
    pytest.mark.skipif(not CLIENT_FILE.is_file(), reason="run scripts/build-web"),
]
__all__ = ["cdp", "chromium"]

TEST_TIMEOUT_S = 60.0
RING = {"ring_operators": {"timeout_s": 60, "on_no_answer": "agent"}}


async def credentials_gone(page: Page) -> None:
    """Wait until the page has its credentials (it is joining or has tried), then check that
    the address bar holds no fragment (the history entry is the same one, replaced)."""
    while await page.evaluate("location.hash !== '' && window.kiosk.connection === 'joining'"):
        await asyncio.sleep(0.05)
    assert await page.evaluate("location.hash") == ""
    assert await page.evaluate("location.href") == await page.evaluate(
        "location.origin + '/operator'"
    )


async def test_the_admins_token_leaves_the_address_bar(
    server: BackendServer, api: Api, enrolled: TestDevice, cdp: Cdp
) -> None:
    call_id = (await api.start_call(enrolled)).json()["call_id"]
    grant = await Operators(server.core, server.config.livekit).grant(call_id, actor="test")
    async with asyncio.timeout(TEST_TIMEOUT_S), Page.open(cdp) as page:
        await page.goto(f"{server.url}{grant.join_path()}")
        await credentials_gone(page)


async def test_a_rings_ticket_leaves_the_address_bar(
    server: BackendServer, api: Api, enrolled: TestDevice, cdp: Cdp, clock: FakeClock
) -> None:
    await server.core.set_device_settings(enrolled.device_id, RING, actor="cli")
    call_id = (await api.start_call(enrolled)).json()["call_id"]
    ring = await server.core.ringing.get(call_id)
    assert ring is not None and ring.state.value == "ringing"
    link = server.core.ringing.join_url(call_id, clock() + 600)
    async with asyncio.timeout(TEST_TIMEOUT_S), Page.open(cdp) as page:
        await page.goto(link.replace(link.split("/operator")[0], server.url))
        await credentials_gone(page)
        # The ticket was traded for a token: the page went on to LiveKit (not run here).
        error = await page.evaluate("window.kiosk.error")
        assert error is None or "signal connection" in error, error
