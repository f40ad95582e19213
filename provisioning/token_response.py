"""The one JSON answer that hands someone a LiveKit token: a device's call grant, an operator's
token (an admin's or a ring's join link), `appliance doctor`'s throwaway room (docs/api.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web

from provisioning.admin.api import iso


class TokenGrant(Protocol):
    """What every token answer carries."""

    @property
    def server_url(self) -> str: ...
    @property
    def token(self) -> str: ...
    @property
    def room(self) -> str: ...
    @property
    def identity(self) -> str: ...
    @property
    def expires_at(self) -> float: ...


def token_response(
    grant: TokenGrant,
    *,
    call_id: str | None = None,
    more: Mapping[str, Any] | None = None,
    status: int = 201,
) -> web.Response:
    """`grant` as JSON (`call_id` and `more` after its own fields), never cached: the token is
    a secret."""
    body: dict[str, Any] = {
        "server_url": grant.server_url,
        "token": grant.token,
        "room": grant.room,
        "identity": grant.identity,
    }
    if call_id is not None:
        body["call_id"] = call_id
    body["expires_at"] = iso(grant.expires_at)
    body.update(more or {})
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})
