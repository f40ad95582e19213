"""People in a kiosk's call: operator tokens for a live call, and the page that joins it.

An admin (read-write token) asks for an operator token for one open call; the backend
chooses the identity, mints a token for that room alone with a short life, microphone and
data only, and the operator attribute the kiosk trusts for ending the call. The page at
`/operator` joins with the official LiveKit JavaScript client, vendored by
`scripts/build-web` (no build step, no network at run time). docs/calls-with-people.md.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from provisioning.admin.api import bearer
from provisioning.admin.errors import AdminAuthError, ReadOnlyTokenError
from provisioning.admin.tokens import AdminTokens
from provisioning.config import LiveKitConfig
from provisioning.core import ProvisioningCore
from provisioning.errors import CallEndedError, HostedCallError, UnknownCallError
from provisioning.token_response import token_response
from provisioning.tokens import (
    OPERATOR_PAGE_PATH,
    OPERATOR_TTL_S,
    OperatorGrant,
    mint_operator_grant,
)

WEB_DIR = Path(__file__).resolve().parent / "web"
CLIENT_FILE = WEB_DIR / "vendor" / "livekit-client.umd.js"


class Operators:
    """Mints operator tokens for the fleet's own LiveKit calls."""

    def __init__(
        self, core: ProvisioningCore, livekit: LiveKitConfig, *, ttl_s: int = OPERATOR_TTL_S
    ) -> None:
        self._core = core
        self._livekit = livekit
        self._ttl_s = ttl_s

    async def grant(self, call_id: str, *, actor: str) -> OperatorGrant:
        """A token for one person to join `call_id` now; the call must be open."""
        call = await self._core.get_call(call_id)
        if call is None:
            raise UnknownCallError(f"no call {call_id}")
        if call.ended_at is not None:
            raise CallEndedError(f"call {call_id} has ended")
        if not self._core.on_own_livekit(await self._core.get_device(call.device_id)):
            raise HostedCallError(
                f"call {call_id} is in a hosted platform's room: only calls on the fleet's "
                "own LiveKit server can be joined"
            )
        return mint_operator_grant(
            server_url=self._livekit.url,
            api_key=self._livekit.api_key,
            api_secret=self._livekit.api_secret,
            room=call.room,
            call_id=call_id,
            name=actor,
            actor=actor,
            ttl_s=self._ttl_s,
        )


def add_operator_routes(app: web.Application, operators: Operators, tokens: AdminTokens) -> None:
    """`POST /v1/admin/calls/{call_id}/operator-token` (read-write admin token) and the page."""

    async def operator_token(request: web.Request) -> web.Response:
        try:
            admin = await tokens.authenticate(bearer(request))
        except AdminAuthError as exc:
            return web.json_response(
                {"error": exc.code, "message": exc.message},
                status=exc.status,
                headers={"WWW-Authenticate": 'Bearer realm="kiosk-admin"'},
            )
        if not admin.can_write:
            raise ReadOnlyTokenError()
        grant = await operators.grant(request.match_info["call_id"], actor=admin.name)
        join_url = str(request.url.origin()) + grant.join_path()
        return token_response(grant, call_id=grant.call_id, more={"join_url": join_url})

    async def page(_: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_DIR / "operator.html")

    async def script(_: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_DIR / "operator.js")

    async def client(_: web.Request) -> web.StreamResponse:
        if not CLIENT_FILE.is_file():
            raise web.HTTPNotFound(
                text="the LiveKit client is not installed: run scripts/build-web"
            )
        return web.FileResponse(CLIENT_FILE)

    app.router.add_post("/v1/admin/calls/{call_id}/operator-token", operator_token)
    app.router.add_get(OPERATOR_PAGE_PATH, page)
    app.router.add_get(f"{OPERATOR_PAGE_PATH}/operator.js", script)
    app.router.add_get(f"{OPERATOR_PAGE_PATH}/livekit-client.umd.js", client)
