"""The web console over real HTTP: sign-in, cookie flags, CSRF, read-only tokens, escaping."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from provisioning.admin.console import LOGIN_COOKIE, SESSION_COOKIE
from provisioning.admin.tokens import SESSION_TTL_S, AdminTokens
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
from .conftest import TIMEOUT_S, Api, FakeClock, TestDevice

pytestmark = pytest.mark.integration
__all__ = ["admin_db", "admin_tokens", "database_url", "read_token", "write_token"]

_CSRF = re.compile(r'name=csrf value="([^"]+)"')


class Browser:
    """An httpx client that behaves like a browser on the console: cookies, Origin on POST."""

    def __init__(self, client: httpx.AsyncClient, origin: str) -> None:
        self.client = client
        self.origin = origin

    async def get(self, path: str, **kwargs: object) -> httpx.Response:
        async with asyncio.timeout(TIMEOUT_S):
            return await self.client.get(path, **kwargs)  # type: ignore[arg-type]

    async def post(
        self, path: str, data: dict[str, str], headers: dict[str, str] | None = None
    ) -> httpx.Response:
        async with asyncio.timeout(TIMEOUT_S):
            return await self.client.post(
                path, data=data, headers={"Origin": self.origin, **(headers or {})}
            )

    async def sign_in(self, token: str, headers: dict[str, str] | None = None) -> httpx.Response:
        form = await self.get("/console/login")
        login_csrf = re.search(r'name=login_csrf value="([^"]+)"', form.text)
        assert login_csrf is not None
        return await self.post(
            "/console/login", {"token": token, "login_csrf": login_csrf.group(1)}, headers
        )

    async def csrf(self) -> str:
        page = await self.get("/console/devices")
        assert page.status_code == 200, page.text
        match = _CSRF.search(page.text)
        assert match is not None
        return match.group(1)


@pytest.fixture
async def browser(server: BackendServer) -> AsyncIterator[Browser]:
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT_S) as client:
        yield Browser(client, server.url)


async def pending_device(server: BackendServer, api: Api, name: str = "lobby") -> TestDevice:
    device = TestDevice()
    code = await server.core.create_enrollment_code(requires_approval=True)
    assert (await api.enroll(device, code, name=name)).status_code == 201
    return device


async def status_of(server: BackendServer, device: TestDevice) -> DeviceStatus:
    return (await server.core.get_device(device.device_id)).status


async def test_sign_in_sets_a_strict_http_only_session_cookie(
    browser: Browser, write_token: str
) -> None:
    response = await browser.sign_in(write_token)
    assert response.status_code == 303 and response.headers["Location"] == "/console/devices"
    cookies = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
    (session,) = [c for c in cookies if c.startswith(f"{SESSION_COOKIE}=")]
    flags = {part.strip().split("=")[0].lower(): part.strip() for part in session.split(";")}
    assert "httponly" in flags and flags["samesite"] == "SameSite=Strict"
    assert flags["path"] == "Path=/console" and flags["max-age"] == f"Max-Age={SESSION_TTL_S}"
    assert "secure" not in flags  # plain http: a Secure cookie would never come back
    assert write_token not in session
    assert any(c.startswith(f'{LOGIN_COOKIE}=""') for c in cookies)  # the login cookie is spent
    page = await browser.get("/console/devices")
    assert page.status_code == 200 and "ops (read-write)" in page.text
    assert write_token not in page.text


async def test_the_cookie_is_secure_behind_https(browser: Browser, write_token: str) -> None:
    response = await browser.sign_in(write_token, {"X-Forwarded-Proto": "https"})
    (session,) = [
        v
        for k, v in response.headers.multi_items()
        if k == "set-cookie" and v.startswith(f"{SESSION_COOKIE}=")
    ]
    assert "; Secure" in session


async def test_sign_in_is_refused_without_its_form_token_or_with_a_bad_token(
    browser: Browser, write_token: str
) -> None:
    refused = await browser.post("/console/login", {"token": write_token, "login_csrf": "x"})
    assert refused.status_code == 401 and "stale" in refused.text
    assert f"{SESSION_COOKIE}=" not in refused.headers.get("set-cookie", "")
    wrong = await browser.sign_in(write_token[:-2] + "xx")
    assert wrong.status_code == 401 and "That token was refused." in wrong.text
    assert write_token[:-2] not in wrong.text
    assert (await browser.get("/console/devices")).status_code == 303


async def test_pages_redirect_to_sign_in_and_forms_need_a_session(
    browser: Browser, server: BackendServer, api: Api
) -> None:
    device = await pending_device(server, api)
    page = await browser.get("/console/devices")
    assert page.status_code == 303 and page.headers["Location"] == "/console/login"
    refused = await browser.post(f"/console/devices/{device.device_id}/approve", {"csrf": "x"})
    assert refused.status_code == 403
    assert await status_of(server, device) is DeviceStatus.PENDING


async def test_forms_without_the_sessions_csrf_token_are_refused(
    browser: Browser, server: BackendServer, api: Api, write_token: str
) -> None:
    device = await pending_device(server, api)
    await browser.sign_in(write_token)
    csrf = await browser.csrf()
    approve = f"/console/devices/{device.device_id}/approve"
    for data, headers in (
        ({}, {}),
        ({"csrf": ""}, {}),
        ({"csrf": csrf[:-1]}, {}),
        ({"csrf": csrf}, {"Origin": "http://evil.example"}),
        ({"csrf": csrf}, {"Origin": "null"}),
        ({"csrf": csrf}, {"Sec-Fetch-Site": "cross-site"}),
    ):
        refused = await browser.post(approve, data, headers)
        assert refused.status_code == 403, (data, headers)
        assert "Refused" in refused.text
        assert await status_of(server, device) is DeviceStatus.PENDING
    codes = await browser.post("/console/enrollment-codes", {"label": "x"})
    assert codes.status_code == 403
    assert await server.core.list_enrollment_codes() != [] and all(
        c.label != "x" for c in await server.core.list_enrollment_codes()
    )
    assert (await browser.post("/console/logout", {})).status_code == 403

    approved = await browser.post(approve, {"csrf": csrf})
    assert approved.status_code == 303
    assert await status_of(server, device) is DeviceStatus.APPROVED
    actions = await server.core.list_admin_actions()
    assert (actions[0].action, actions[0].actor) == ("device.approve", "token:ops")


async def test_a_read_only_token_sees_pages_but_no_form_and_every_write_is_refused(
    browser: Browser, server: BackendServer, api: Api, read_token: str
) -> None:
    device = await pending_device(server, api, "reception")
    await browser.sign_in(read_token)
    csrf = await browser.csrf()  # the sign-out form's
    for path in (
        "/console/devices",
        f"/console/devices/{device.device_id}",
        "/console/enrollment-codes",
        "/console/calls",
        "/console/actions",
        "/console/webhooks",
        "/console/groups",
    ):
        page = await browser.get(path)
        assert page.status_code == 200, path
        forms = re.findall(r'<form method=post action="?([^" >]+)', page.text)
        assert forms == ["/console/logout"], (path, forms)
    devices = (await browser.get("/console/devices")).text
    assert "reception" in devices and "auditor (read)" in devices
    base = f"/console/devices/{device.device_id}"
    for path, data in (
        (f"{base}/approve", {}),
        (f"{base}/reject", {}),
        (f"{base}/revoke", {}),
        (f"{base}/settings", {"speaker_volume": "0.5"}),
        (f"{base}/group", {"group": "lobby"}),
        ("/console/enrollment-codes", {"label": "sneaky"}),
        ("/console/groups", {"group": "sneaky", "speaker_volume": "1"}),
    ):
        refused = await browser.post(path, {"csrf": csrf, **data})
        assert refused.status_code == 403, path
        assert "may only read" in refused.text
    after = await server.core.get_device(device.device_id)
    assert (after.status, dict(after.settings), after.group) == (DeviceStatus.PENDING, {}, None)
    assert [c.label for c in await server.core.list_enrollment_codes()] == [""]
    assert await server.core.list_groups() == {}


async def test_every_stored_string_is_escaped(
    browser: Browser, server: BackendServer, api: Api, write_token: str
) -> None:
    name = "<script>alert(1)</script> & \"q\" 'x'"
    device = await pending_device(server, api, name)
    await server.core.create_enrollment_code(label="<b>bold</b>")
    await browser.sign_in(write_token)
    for path in ("/console/devices", f"/console/devices/{device.device_id}"):
        page = (await browser.get(path)).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;q&quot; &#x27;x&#x27;" in page
        assert "<script" not in page
    codes = (await browser.get("/console/enrollment-codes")).text
    assert "&lt;b&gt;bold&lt;/b&gt;" in codes and "<b>" not in codes


async def test_a_new_enrollment_code_is_shown_once(
    browser: Browser, server: BackendServer, write_token: str
) -> None:
    await browser.sign_in(write_token)
    csrf = await browser.csrf()
    created = await browser.post(
        "/console/enrollment-codes",
        {"csrf": csrf, "label": "hall", "ttl_s": "86400", "requires_approval": "1", "group": "g1"},
    )
    assert created.status_code == 200
    assert created.headers["Cache-Control"] == "no-store"
    assert "script-src" not in created.headers["Content-Security-Policy"]
    match = re.search(r"<p class=secret>([2-9A-Z-]{19})</p>", created.text)
    assert match is not None, created.text
    code = match.group(1)
    (stored,) = await server.core.list_enrollment_codes()
    assert (stored.label, stored.requires_approval, stored.group) == ("hall", True, "g1")
    assert stored.expires_at - stored.created_at == 86400
    for path in ("/console/enrollment-codes", "/console/devices", "/console/actions"):
        assert code not in (await browser.get(path)).text


async def test_device_settings_and_group_from_the_form(
    browser: Browser, server: BackendServer, api: Api, write_token: str
) -> None:
    device = await pending_device(server, api)
    await browser.sign_in(write_token)
    csrf = await browser.csrf()
    base = f"/console/devices/{device.device_id}"
    saved = await browser.post(
        f"{base}/settings",
        {
            "csrf": csrf,
            "speaker_volume": "0.4",
            "call_max_duration_s": "300",
            "wake_word_enabled": "off",
        },
    )
    assert saved.status_code == 303, saved.text
    after = await server.core.get_device(device.device_id)
    assert dict(after.settings) == {
        "speaker_volume": 0.4,
        "call": {"max_duration_s": 300.0},
        "wake_word": {"enabled": False},
    }
    bad = await browser.post(f"{base}/settings", {"csrf": csrf, "speaker_volume": "2"})
    assert bad.status_code == 400 and "speaker_volume" in bad.text
    assert (await server.core.get_device(device.device_id)).settings == after.settings
    assert (
        await browser.post(f"{base}/group", {"csrf": csrf, "group": "lobby"})
    ).status_code == 303
    assert (await server.core.get_device(device.device_id)).group == "lobby"
    page = (await browser.get(base)).text
    assert 'name="speaker_volume" type=number step=0.05 min=0 max=1 value="0.4"' in page


async def test_a_form_save_keeps_the_settings_the_form_does_not_show(
    browser: Browser, server: BackendServer, api: Api, write_token: str
) -> None:
    device = await pending_device(server, api)
    stored = {
        "tools": ["end_call"],
        "provider": {"kind": "livekit"},
        "call": {"max_duration_s": 300.0},
        "speaker_volume": 0.5,
    }
    await server.core.set_device_settings(device.device_id, stored, actor="cli")
    await server.core.set_group_settings("lobby", stored, actor="cli")
    await browser.sign_in(write_token)
    csrf = await browser.csrf()
    # The form as a browser sends it: every field, the ones left empty unset.
    form = {"csrf": csrf, "call_max_duration_s": "", "call_idle_timeout_s": "20"}
    form |= {"speaker_volume": "", "wake_word_enabled": "off"}
    kept = {
        "tools": ["end_call"],
        "provider": {"kind": "livekit"},
        "call": {"idle_timeout_s": 20.0},
        "wake_word": {"enabled": False},
    }
    saved = await browser.post(f"/console/devices/{device.device_id}/settings", form)
    assert saved.status_code == 303, saved.text
    assert dict((await server.core.get_device(device.device_id)).settings) == kept
    saved = await browser.post("/console/groups", {**form, "group": "lobby"})
    assert saved.status_code == 303, saved.text
    assert await server.core.list_groups() == {"lobby": kept}


async def test_sign_out_and_token_revocation_end_the_session(
    browser: Browser, admin_tokens: AdminTokens, write_token: str
) -> None:
    await browser.sign_in(write_token)
    cookie = browser.client.cookies[SESSION_COOKIE]
    out = await browser.post("/console/logout", {"csrf": await browser.csrf()})
    assert out.status_code == 303 and out.headers["Location"] == "/console/login"
    browser.client.cookies.set(SESSION_COOKIE, cookie)  # a copy kept by an attacker
    assert (await browser.get("/console/devices")).status_code == 303

    browser.client.cookies.clear()
    await browser.sign_in(write_token)
    assert (await browser.get("/console/devices")).status_code == 200
    await admin_tokens.revoke("ops")
    assert (await browser.get("/console/devices")).status_code == 303


async def test_webhook_deliveries_page_shows_failures(
    browser: Browser, admin_db: Database, clock: FakeClock, read_token: str
) -> None:
    ok, bad = await add_deliveries(admin_db, clock)
    await browser.sign_in(read_token)
    page = (await browser.get("/console/webhooks")).text
    assert "device.approved" in page and "call.ended" in page
    assert "HTTP 204" in page and "HTTP 503" in page
    failed = (await browser.get("/console/webhooks", params={"state": "failed"})).text
    assert "call.ended" in failed and "device.approved" not in failed
    assert bad in failed and ok not in failed
    assert '<span class="badge failed">failed</span>' in failed
    bad_filter = await browser.get("/console/webhooks", params={"state": "<x>"})
    assert bad_filter.status_code == 400 and "<x>" not in bad_filter.text


async def test_group_settings_from_the_console(
    browser: Browser, server: BackendServer, api: Api, write_token: str
) -> None:
    device = await pending_device(server, api)
    await browser.sign_in(write_token)
    csrf = await browser.csrf()
    created = await browser.post(
        "/console/groups", {"csrf": csrf, "group": "lobby", "wake_word_enabled": "off"}
    )
    assert (
        created.status_code == 303 and created.headers["Location"] == "/console/groups?saved=lobby"
    )
    assert await server.core.list_groups() == {"lobby": {"wake_word": {"enabled": False}}}
    await browser.post(
        f"/console/devices/{device.device_id}/group", {"csrf": csrf, "group": "lobby"}
    )
    page = (await browser.get("/console/groups?saved=lobby")).text
    assert "Settings saved for group lobby." in page
    assert re.search(r'<td data-label="Devices">1</td>', page)
    changed = await browser.post(
        "/console/groups", {"csrf": csrf, "group": "lobby", "speaker_volume": "0.2"}
    )
    assert changed.status_code == 303
    device_now = await server.core.get_device(device.device_id)
    assert server.core.settings_of(device_now) == {"speaker_volume": 0.2}
    for bad in ({"group": "no spaces"}, {"group": "lobby", "speaker_volume": "loud"}):
        refused = await browser.post("/console/groups", {"csrf": csrf, **bad})
        assert refused.status_code == 400, bad
    assert list(await server.core.list_groups()) == ["lobby"]
