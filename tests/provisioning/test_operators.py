"""Operator tokens: one open call's room, a short life, microphone and data only, the
attribute the kiosk trusts, and only for a read-write admin."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest

from provisioning.http import BackendServer

from .admin_fixtures import admin_db, admin_tokens, database_url, read_token, write_token
from .conftest import Api, TestDevice, assert_refused
from .test_admin_api import Admin, admin, client, reader
from .test_api import API_KEY, API_SECRET

__all__ = ["admin", "admin_db", "admin_tokens", "client", "database_url", "reader"]
__all__ += ["read_token", "write_token"]

pytestmark = pytest.mark.integration


async def test_an_operator_token_is_for_one_live_call_and_nothing_else(
    server: BackendServer, api: Api, enrolled: TestDevice, admin: Admin, reader: Admin
) -> None:
    started = await api.start_call(enrolled)
    assert started.status_code == 201, started.text
    call = started.json()

    response = await admin("POST", f"/calls/{call['call_id']}/operator-token")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["room"] == call["room"] and body["server_url"] == call["server_url"]
    assert body["join_url"].startswith(f"{server.url}/operator#")
    assert body["token"] in httpx.URL(body["join_url"]).fragment
    claims = jwt.decode(body["token"], API_SECRET, algorithms=["HS256"], issuer=API_KEY)
    assert claims["sub"] == body["identity"] and body["identity"].startswith("operator-")
    assert claims["video"] == {
        "roomJoin": True,
        "room": call["room"],
        "canPublish": True,
        "canSubscribe": True,
        "canPublishData": True,
        "canPublishSources": ["microphone"],
        "canUpdateOwnMetadata": False,  # so the operator attribute cannot be given away
    }
    assert claims["attributes"] == {"kiosk.role": "operator"}
    assert "roomConfig" not in claims  # no agent dispatched by an operator's join
    assert claims["exp"] - time.time() <= 121

    # Each operator is someone new.
    again = (await admin("POST", f"/calls/{call['call_id']}/operator-token")).json()
    assert again["identity"] != body["identity"]
    # A read-only admin may not, nor anyone without a token.
    assert_refused(
        await reader("POST", f"/calls/{call['call_id']}/operator-token"), 403, "read_only_token"
    )
    nobody = Admin(admin.client, None)
    response = await nobody("POST", f"/calls/{call['call_id']}/operator-token")
    assert_refused(response, 401, "admin_token_required")


async def test_no_operator_token_for_an_ended_or_unknown_call(
    api: Api, enrolled: TestDevice, admin: Admin
) -> None:
    started = await api.start_call(enrolled)
    call_id = started.json()["call_id"]
    ended = await api.send(
        "POST", f"/v1/calls/{call_id}/end", enrolled, {"reason": "user", "duration_ms": 1000}
    )
    assert ended.status_code == 200, ended.text
    assert_refused(await admin("POST", f"/calls/{call_id}/operator-token"), 409, "call_ended")
    response = await admin("POST", "/calls/c-0000000000000000/operator-token")
    assert_refused(response, 404, "unknown_call")


async def test_the_page_is_served(server: BackendServer, admin: Admin) -> None:
    page = await admin.client.get("/operator")
    assert page.status_code == 200 and "livekit-client.umd.js" in page.text
    script = await admin.client.get("/operator/operator.js")
    assert script.status_code == 200 and "end_call" in script.text
