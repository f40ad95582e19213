"""The admin API over real HTTP: Bearer tokens and scopes, approval, settings, calls, OpenAPI."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from provisioning.admin import AdminStores
from provisioning.admin.openapi import document
from provisioning.admin.tokens import AdminTokens
from provisioning.backend import open_backend
from provisioning.config import Config
from provisioning.http import BackendServer, create_app
from provisioning.rooms import RecordingRoomService
from provisioning.storage.base import Database

from .admin_fixtures import (
    add_deliveries,
    admin_db,
    admin_tokens,
    database_url,
    read_token,
    write_token,
)
from .conftest import TIMEOUT_S, Api, FakeClock, TestDevice, assert_refused

pytestmark = pytest.mark.integration
__all__ = ["admin_db", "admin_tokens", "database_url", "read_token", "write_token"]


class Admin:
    """Admin API requests with one token, every await bounded."""

    def __init__(self, client: httpx.AsyncClient, token: str | None) -> None:
        self.client = client
        self.headers = {} if token is None else {"Authorization": f"Bearer {token}"}

    async def __call__(
        self, method: str, path: str, body: Any = None, **params: str
    ) -> httpx.Response:
        async with asyncio.timeout(TIMEOUT_S):
            return await self.client.request(
                method, f"/v1/admin{path}", json=body, params=params, headers=self.headers
            )


@pytest.fixture
async def client(server: BackendServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT_S) as c:
        yield c


@pytest.fixture
def admin(client: httpx.AsyncClient, write_token: str) -> Admin:
    return Admin(client, write_token)


@pytest.fixture
def reader(client: httpx.AsyncClient, read_token: str) -> Admin:
    return Admin(client, read_token)


async def enroll_pending(admin: Admin, api: Api, name: str = "lobby") -> TestDevice:
    response = await admin("POST", "/enrollment-codes", {"requires_approval": True, "label": name})
    assert response.status_code == 201, response.text
    device = TestDevice()
    assert (await api.enroll(device, response.json()["code"], name=name)).status_code == 201
    return device


def documented_operations() -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, item in document()["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]


async def test_the_openapi_document_lists_every_admin_route_and_no_other(config: Config) -> None:
    async with open_backend(config, rooms=RecordingRoomService()) as backend:
        app = create_app(backend.core, admin=AdminStores.over(backend.storage.db))
        served = set()
        for resource in app.router.resources():
            info = resource.get_info()
            path = info.get("path") or info.get("formatter")
            assert isinstance(path, str)
            if path.startswith("/v1/admin"):
                served |= {(route.method, path) for route in resource if route.method != "HEAD"}
    assert served, "no admin route is served"
    assert served == set(documented_operations())


async def test_the_openapi_document_is_served_without_a_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/admin/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"] == "3.1.0"
    assert doc == document()
    # Every reference points at something the document defines.
    for ref in re.findall(r'"\$ref": "#/components/(\w+)/(\w+)"', response.text):
        assert ref[1] in doc["components"][ref[0]], ref


@pytest.mark.parametrize("authorization", [None, "Bearer", "Bearer kadm_nope", "Basic eDp5"])
async def test_every_operation_refuses_without_a_valid_token(
    client: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in documented_operations():
        if path.endswith("/openapi.json"):
            continue
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        response = await client.request(method, concrete, headers=headers, json={})
        assert_refused(response, 401, "admin_token_required")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_revoked_token_is_refused(admin: Admin, admin_tokens: AdminTokens) -> None:
    assert (await admin("GET", "/devices")).status_code == 200
    await admin_tokens.revoke("ops")
    assert_refused(await admin("GET", "/devices"), 401, "admin_token_required")


async def test_a_read_token_reads_but_changes_nothing(
    admin: Admin, reader: Admin, api: Api
) -> None:
    device = await enroll_pending(admin, api)
    listed = await reader("GET", "/devices")
    assert listed.status_code == 200
    assert [d["status"] for d in listed.json()["devices"]] == ["pending"]
    assert (await reader("GET", "/devices", status="approved")).json()["devices"] == []
    assert_refused(await reader("GET", "/devices", status="lost"), 400, "bad_request")
    path = f"/devices/{device.device_id}"
    for method, suffix, body in (
        ("POST", "/approve", None),
        ("POST", "/reject", None),
        ("POST", "/revoke", None),
        ("PUT", "/settings", {"speaker_volume": 0.5}),
        ("PUT", "/group", {"group": "lobby"}),
    ):
        assert_refused(await reader(method, path + suffix, body), 403, "read_only_token")
    assert_refused(await reader("POST", "/enrollment-codes", {}), 403, "read_only_token")
    assert_refused(await reader("PUT", "/groups/g/settings", {}), 403, "read_only_token")
    after = (await admin("GET", path)).json()
    assert (after["status"], after["settings"], after["group"]) == ("pending", {}, None)
    assert (await reader("GET", "/actions")).json()["actions"][0]["action"] == (
        "enrollment_code.create"
    )


async def test_approve_reject_and_revoke(
    admin: Admin, api: Api, rooms: RecordingRoomService
) -> None:
    first = await enroll_pending(admin, api, "first")
    second = await enroll_pending(admin, api, "second")
    assert_refused(await api.start_call(first), 403, "device_pending")

    approved = await admin("POST", f"/devices/{first.device_id}/approve")
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved"
    assert (await api.start_call(first)).status_code == 201
    assert_refused(await admin("POST", f"/devices/{first.device_id}/approve"), 409, "invalid_state")

    assert (await admin("POST", f"/devices/{second.device_id}/reject")).json()["status"] == (
        "rejected"
    )
    revoked = await admin("POST", f"/devices/{first.device_id}/revoke")
    assert revoked.json()["status"] == "revoked"
    assert_refused(await api.start_call(first), 403, "device_revoked")
    assert_refused(await admin("POST", "/devices/d-0000000000000000/revoke"), 404, "unknown_device")

    actions = (await admin("GET", "/actions")).json()["actions"]
    assert [(a["action"], a["actor"]) for a in actions[:3]] == [
        ("device.revoke", "token:ops"),
        ("device.reject", "token:ops"),
        ("device.approve", "token:ops"),
    ]


async def test_an_enrollment_code_is_in_its_answer_only(admin: Admin) -> None:
    response = await admin("POST", "/enrollment-codes", {"label": "hall", "group": "front"})
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    code = response.json()["code"]
    assert re.fullmatch(r"[2-9A-Z]{4}(-[2-9A-Z]{4}){3}", code)
    listed = await admin("GET", "/enrollment-codes")
    assert code not in listed.text and code.replace("-", "") not in listed.text
    (stored,) = listed.json()["enrollment_codes"]
    assert (stored["label"], stored["group"], stored["requires_approval"]) == (
        "hall",
        "front",
        False,
    )
    assert_refused(await admin("POST", "/enrollment-codes", {"ttl_s": "1h"}), 400, "bad_request")
    assert_refused(await admin("POST", "/enrollment-codes", [1]), 400, "bad_request")


async def test_settings_and_groups(admin: Admin, api: Api) -> None:
    device = await enroll_pending(admin, api)
    path = f"/devices/{device.device_id}"
    group = await admin("PUT", "/groups/lobby/settings", {"wake_word": {"enabled": False}})
    assert group.json() == {"name": "lobby", "settings": {"wake_word": {"enabled": False}}}
    assert (await admin("PUT", f"{path}/group", {"group": "lobby"})).json()["group"] == "lobby"
    changed = await admin("PUT", f"{path}/settings", {"speaker_volume": 0.25})
    assert changed.status_code == 200, changed.text
    assert changed.json()["effective_settings"] == {
        "speaker_volume": 0.25,
        "wake_word": {"enabled": False},
    }
    assert_refused(await admin("PUT", f"{path}/settings", {"volume": 1}), 400, "bad_request")
    assert_refused(await admin("PUT", f"{path}/group", {}), 400, "bad_request")
    groups = (await admin("GET", "/groups")).json()["groups"]
    assert groups == [{"name": "lobby", "settings": {"wake_word": {"enabled": False}}}]


async def make_call(api: Api, device: TestDevice, reason: str, duration_ms: int) -> str:
    started = await api.start_call(device)
    assert started.status_code == 201, started.text
    call_id: str = started.json()["call_id"]
    ended = await api.send(
        "POST", f"/v1/calls/{call_id}/end", device, {"reason": reason, "duration_ms": duration_ms}
    )
    assert ended.status_code == 200, ended.text
    return call_id


async def test_calls_filter_by_device_reason_and_date(
    admin: Admin, api: Api, clock: FakeClock
) -> None:
    one, two = TestDevice(), TestDevice()
    for device in (one, two):
        code = (await admin("POST", "/enrollment-codes", {})).json()["code"]
        assert (await api.enroll(device, code)).status_code == 201
    early = await make_call(api, one, "user", 61_000)
    clock.advance(2 * 86400)
    late = await make_call(api, one, "agent_left", 5_000)
    clock.advance(1)
    other = await make_call(api, two, "user", 1_000)

    async def ids(**params: str) -> list[str]:
        response = await admin("GET", "/calls", **params)
        assert response.status_code == 200, response.text
        return [c["call_id"] for c in response.json()["calls"]]

    assert await ids() == [other, late, early]
    assert await ids(device_id=one.device_id) == [late, early]
    assert await ids(end_reason="user") == [other, early]
    assert await ids(device_id=one.device_id, end_reason="user") == [early]
    midpoint = clock.now - 86400
    day = datetime.fromtimestamp(midpoint, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert await ids(since=day) == [other, late]
    assert await ids(until=day) == [early]
    assert await ids(limit="1") == [other]
    calls = (await admin("GET", "/calls", end_reason="agent_left")).json()["calls"]
    assert calls[0]["duration_ms"] == 5_000 and calls[0]["ended_at"].endswith("Z")
    for bad in ({"end_reason": "bored"}, {"since": "yesterday"}, {"limit": "0"}):
        assert_refused(await admin("GET", "/calls", **bad), 400, "bad_request")


async def test_webhook_deliveries_show_the_last_attempt(
    reader: Admin, admin_db: Database, clock: FakeClock
) -> None:
    ok, bad = await add_deliveries(admin_db, clock)
    listed = await reader("GET", "/webhook-deliveries")
    assert listed.status_code == 200, listed.text
    by_id = {d["event_id"]: d for d in listed.json()["deliveries"]}
    assert (by_id[ok]["state"], by_id[ok]["last_status"], by_id[ok]["attempts"]) == (
        "delivered",
        204,
        1,
    )
    assert (by_id[bad]["state"], by_id[bad]["last_status"], by_id[bad]["last_error"]) == (
        "failed",
        503,
        "http_status",
    )
    failed = (await reader("GET", "/webhook-deliveries", state="failed")).json()["deliveries"]
    assert [d["event_id"] for d in failed] == [bad]
    assert_refused(await reader("GET", "/webhook-deliveries", state="lost"), 400, "bad_request")


async def test_unknown_admin_path_is_a_json_404(admin: Admin) -> None:
    assert_refused(await admin("GET", "/nothing"), 404, "not_found")


def test_the_document_declares_bearer_security() -> None:
    doc: dict[str, Any] = document()
    assert doc["components"]["securitySchemes"]["adminToken"]["scheme"] == "bearer"
    assert doc["paths"]["/v1/admin/openapi.json"]["get"]["security"] == []
