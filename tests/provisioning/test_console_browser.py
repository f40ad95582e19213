"""The console in a real browser (Debian's headless Chromium over DevTools): sign in, approve a
pending device, revoke one, filter calls, make a code; a read-only token sees no write form.

Screenshots go to the test's tmp dir (their paths are printed); the checks read the rows.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from provisioning.http import BackendServer
from provisioning.models import DeviceStatus
from provisioning.storage.base import Database

from .admin_fixtures import (
    add_deliveries,
    admin_db,
    admin_tokens,
    database_url,
    read_token,
    write_token,
)
from .chromium import Cdp, Page, cdp, chromium, chromium_path, row_of, sign_in
from .conftest import Api, FakeClock, TestDevice

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed"),
]
__all__ = [
    "admin_db",
    "admin_tokens",
    "cdp",
    "chromium",
    "database_url",
    "read_token",
    "write_token",
]

# The whole browser session of one test, however loaded the machine.
TEST_TIMEOUT_S = 90.0


async def enroll(server: BackendServer, api: Api, name: str, *, approval: bool) -> TestDevice:
    device = TestDevice()
    code = await server.core.create_enrollment_code(requires_approval=approval)
    assert (await api.enroll(device, code, name=name)).status_code == 201
    return device


async def call(api: Api, device: TestDevice, reason: str, duration_ms: int) -> None:
    started = await api.start_call(device)
    assert started.status_code == 201, started.text
    ended = await api.send(
        "POST",
        f"/v1/calls/{started.json()['call_id']}/end",
        device,
        {"reason": reason, "duration_ms": duration_ms},
    )
    assert ended.status_code == 200, ended.text


async def test_approve_revoke_and_filter_calls_in_chromium(
    server: BackendServer,
    api: Api,
    clock: FakeClock,
    cdp: Cdp,
    write_token: str,
    tmp_path: Path,
) -> None:
    shots = tmp_path / "screenshots"
    lobby = await enroll(server, api, "Lobby <kiosk> & co", approval=True)
    hall = await enroll(server, api, "Hall", approval=False)
    annex = await enroll(server, api, "Annex", approval=False)
    await call(api, hall, "user", 65_000)
    clock.advance(1)
    await call(api, hall, "agent_left", 5_000)
    clock.advance(1)
    await call(api, annex, "user", 3_723_000)

    async with asyncio.timeout(TEST_TIMEOUT_S), Page.open(cdp) as page:
        await page.goto(f"{server.url}/console/login")
        await page.screenshot(shots / "01-login.png")
        await sign_in(page, server.url, write_token)
        pending = await page.rows("#pending table")
        assert row_of(pending, lobby.device_id)[0] == "Lobby <kiosk> & co"
        assert "ops (read-write)" in await page.text("header")
        await page.screenshot(shots / "02-devices-pending.png")

        # Approve the pending device from its row.
        await page.click(f"form[action='/console/devices/{lobby.device_id}/approve'] button")
        assert f"Approved {lobby.device_id}." in await page.text("main")
        assert "No device is waiting for approval." in await page.text("#pending")
        row = row_of(await page.rows("#devices table"), lobby.device_id)
        assert row[0] == "Lobby <kiosk> & co" and row[2].startswith("approved")
        assert "offline" in row[2]  # approved, never checked in yet
        clock.advance(1)
        assert (await api.start_call(lobby)).status_code == 201  # approved: it may call
        await page.screenshot(shots / "03-approved.png")

        # Revoke another one.
        await page.click(f"form[action='/console/devices/{annex.device_id}/revoke'] button")
        row = row_of(await page.rows("#devices table"), annex.device_id)
        assert row[2] == "revoked"
        assert f"/console/devices/{annex.device_id}/revoke" not in await page.evaluate(
            "document.body.innerHTML"
        )
        await page.screenshot(shots / "04-revoked.png")
        assert (await server.core.get_device(annex.device_id)).status is DeviceStatus.REVOKED
        assert (await server.core.get_device(lobby.device_id)).status is DeviceStatus.APPROVED

        # Filter calls: by device and end reason, then by a date with nothing in it.
        await page.goto(f"{server.url}/console/calls")
        rows = await page.rows("main table")
        assert len(rows) == 4
        # The lobby's call, not ended: a read-write session may join it.
        assert rows[0][3:6] == ["open Join call", "-", "-"]
        assert [r[3] for r in rows[1:]] != [] and all("Join" not in r[3] for r in rows[1:])
        await page.fill("select[name=device_id]", hall.device_id)
        await page.fill("select[name=end_reason]", "user")
        await page.click("form.filters button")
        rows = await page.rows("main table")
        assert len(rows) == 1, rows
        _, device, trigger, _, reason, duration, _ = rows[0]
        assert "Hall" in device and hall.device_id in device
        assert (trigger, reason, duration) == ("button", "user", "1:05")
        await page.screenshot(shots / "05-calls-filtered.png")

        await page.fill("select[name=device_id]", "")
        await page.click("form.filters button")
        durations = sorted(r[5] for r in await page.rows("main table"))
        assert durations == ["1:02:03", "1:05"]  # both "user" calls, both devices

        await page.fill("select[name=end_reason]", "")
        await page.fill("input[name=since]", "2099-01-01")
        await page.click("form.filters button")
        assert "No call matches." in await page.text("main")

        # An enrollment code that requires approval: shown once, then never again.
        await page.goto(f"{server.url}/console/enrollment-codes")
        await page.fill("input[name=label]", "front desk")
        await page.check("input[name=requires_approval]")
        await page.click("form[action='/console/enrollment-codes'] button")
        code = await page.text(".secret")
        assert len(code) == 19 and code.count("-") == 3
        await page.screenshot(shots / "06-code-once.png")
        await page.goto(f"{server.url}/console/enrollment-codes")
        assert code not in await page.text("body")
        assert "front desk" in await page.text("main table")

        # A group with its settings, made from the form.
        await page.goto(f"{server.url}/console/groups")
        await page.fill("input[name=group]", "front")
        await page.fill("input[name=speaker_volume]", "0.3")
        await page.click("form[action='/console/groups'] button")
        assert await page.rows("main table") == [["front", "0", '{"speaker_volume": 0.3}']]
        await page.screenshot(shots / "07-groups.png")

        # A phone: the same page, each row a card with its labels (no header row).
        await page.viewport(390, 844, mobile=True)
        await page.goto(f"{server.url}/console/devices")
        assert (
            await page.evaluate(
                "getComputedStyle(document.querySelector('#devices thead')).display"
            )
            == "none"
        )
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        await page.screenshot(shots / "08-phone.png")


async def test_a_read_only_token_in_chromium_sees_rows_but_no_button(
    server: BackendServer,
    api: Api,
    cdp: Cdp,
    read_token: str,
    admin_db: Database,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    pending = await enroll(server, api, "Reception", approval=True)
    delivered, failed = await add_deliveries(admin_db, clock)
    async with asyncio.timeout(TEST_TIMEOUT_S), Page.open(cdp) as page:
        await sign_in(page, server.url, read_token)
        assert row_of(await page.rows("#pending table"), pending.device_id)[0] == "Reception"
        buttons = await page.evaluate(
            "Array.from(document.querySelectorAll('button')).map(b => b.innerText)"
        )
        assert buttons == ["Sign out"]
        await page.screenshot(tmp_path / "screenshots" / "read-only-devices.png")
        await page.goto(f"{server.url}/console/enrollment-codes")
        assert await page.evaluate("document.querySelectorAll('form[method=post]').length") == 1

        # Webhook deliveries: the last attempt of each, failures filtered.
        await page.goto(f"{server.url}/console/webhooks")
        rows = await page.rows("main table")
        assert [(r[1].split()[1], r[3], r[6]) for r in rows] == [
            (failed, "failed", "HTTP 503"),
            (delivered, "delivered", "HTTP 204"),
        ]
        await page.fill("select[name=state]", "failed")
        await page.click("form.filters button")
        assert [r[1].split()[1] for r in await page.rows("main table")] == [failed]
        await page.screenshot(tmp_path / "screenshots" / "webhooks-failed.png")
    assert (await server.core.get_device(pending.device_id)).status is DeviceStatus.PENDING
