"""A device enrolled with an approval code waits as pending, is approved in the console in a
real browser, and becomes ready without a restart (issue 10's first check)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from appliance.provisioning_client.enrollment import enroll_device
from appliance.settings import load_settings
from appliance.state import State
from demo.stack import LocalStack
from provisioning.admin.tokens import AdminScope, AdminTokens
from provisioning.config import load_config
from provisioning.models import DeviceStatus
from provisioning.storage import open_storage
from tests.e2e.conftest import run_device
from tests.provisioning.chromium import Cdp, Page, cdp, chromium, chromium_path, row_of, sign_in

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed"),
]
__all__ = ["cdp", "chromium"]

# Waiting for approval, the device asks again at least every 10 s (+20 % jitter).
READY_AFTER_APPROVAL_S = 30.0


async def test_a_device_approved_in_the_console_becomes_ready_without_a_restart(
    stack: LocalStack, cdp: Cdp, tmp_path: Path
) -> None:
    files = stack.write_device("kiosk-approval", None)
    settings = load_settings(files.config)
    code = await stack.backend.core.create_enrollment_code(
        ttl_s=600, label="approval", requires_approval=True
    )
    enrollment = await enroll_device(
        settings.device.state_dir, settings.backend.url, settings.device.name, code
    )
    storage = await open_storage(load_config(stack.backend_config).database)
    try:
        _, token = await AdminTokens(storage.db).create("ops", AdminScope.READ_WRITE)
    finally:
        await storage.aclose()

    async with run_device(settings) as device:
        await device.watcher.wait_for(State.AWAITING_APPROVAL, timeout=30)
        async with asyncio.timeout(60), Page.open(cdp) as page:
            await sign_in(page, stack.backend.url, token)
            row = row_of(await page.rows("#pending table"), enrollment.device_id)
            assert row[0] == "kiosk-approval"
            await page.screenshot(tmp_path / "screenshots" / "pending.png")
            await page.click(
                f"form[action='/console/devices/{enrollment.device_id}/approve'] button"
            )
            assert "No device is waiting for approval." in await page.text("#pending")
            await page.screenshot(tmp_path / "screenshots" / "approved.png")
        approved = await stack.backend.core.get_device(enrollment.device_id)
        assert approved.status is DeviceStatus.APPROVED
        await device.watcher.wait_for(State.READY, timeout=READY_AFTER_APPROVAL_S)
        states = [change.state for change in device.watcher.changes]
        # One daemon all along: waiting, then ready, never started again.
        assert State.AWAITING_APPROVAL in states
        assert states.count(State.STARTING) <= 1 and states[-1] is State.READY
        actions = await stack.backend.core.list_admin_actions()
        assert (actions[0].action, actions[0].actor) == ("device.approve", "token:ops")
