"""Minting of LiveKit access tokens: the only module that builds grants."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol
from urllib.parse import urlencode

from livekit.api import AccessToken, VideoGrants

from provisioning.logs import AUDIT_LOGGER

audit = logging.getLogger(AUDIT_LOGGER)

# Set in an operator's token; the kiosk accepts end-call messages from the agent and from
# participants carrying it (appliance/call/livekit_call.py reads the same pair).
OPERATOR_ATTRIBUTE = "kiosk.role"
OPERATOR_ROLE = "operator"
# Every operator's participant identity starts with this (then 8 hex digits): how the backend
# tells an operator answering a ringing call from anyone else joining its room.
OPERATOR_PREFIX = "operator-"
# An operator's token only has to get them into the room: the server refreshes it once in.
OPERATOR_TTL_S = 120
# The operator page (operators.py serves it); its fragment carries the credentials or a ticket.
OPERATOR_PAGE_PATH = "/operator"


@dataclass(frozen=True)
class MintedToken:
    """A signed JWT and its `exp` claim (Unix seconds)."""

    jwt: str = field(repr=False)
    expires_at: int


class TokenMinter(Protocol):
    """What the core needs to give a device its call: one token for one room."""

    def mint(
        self,
        *,
        identity: str,
        name: str,
        room: str,
        device_id: str,
        call_id: str,
        agent_name: str | None = None,
        dispatch: bool = True,
    ) -> MintedToken:
        """A token for `identity` to join `room` and nothing else; `agent_name` (or the
        minter's own) is dispatched into the room, unless `dispatch` is False (a call that
        rings people first: the backend dispatches the agent later, if at all)."""
        ...


@dataclass(frozen=True)
class LiveKitTokenMinter:
    """Mints one-room, microphone-only tokens for the fleet's own LiveKit server that
    dispatch the configured agent.

    A call's token is on the hot path of `POST /v1/calls`, so it is signed here: the
    claims `livekit-api`'s `AccessToken` would write for these grants (a test holds the
    two equal, key for key), as compact JSON, HS256 with the key prepared once. Through
    `AccessToken` it cost 130 µs of CPU (dataclass copies, protobuf to dict, PyJWT's key
    checks on every call); this costs about 20 µs. Other tokens (operators') are rare and
    go through `AccessToken`.
    """

    api_key: str
    api_secret: str = field(repr=False)
    agent_name: str
    ttl_s: int
    _mac: hmac.HMAC = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        mac = hmac.new(self.api_secret.encode(), digestmod=hashlib.sha256)
        object.__setattr__(self, "_mac", mac)

    def mint(
        self,
        *,
        identity: str,
        name: str,
        room: str,
        device_id: str,
        call_id: str,
        agent_name: str | None = None,
        dispatch: bool = True,
    ) -> MintedToken:
        """A token for `identity` to join `room`; everything else is fixed here."""
        metadata = json.dumps({"device_id": device_id, "call_id": call_id})
        now = int(time.time())
        claims: dict[str, object] = {
            "name": name,
            "metadata": metadata,
            "video": {
                "roomJoin": True,
                "room": room,
                "canPublish": True,
                "canSubscribe": True,
                "canPublishData": True,
                "canPublishSources": ["microphone"],
                # The kiosk keeps its state in its own participant attributes, for whoever
                # joins late (docs/calls-with-people.md). This also lets it change its own
                # name and metadata: nothing trusts a kiosk's for anything.
                "canUpdateOwnMetadata": True,
            },
            "sub": identity,
            "iss": self.api_key,
            "nbf": now,
            "exp": now + self.ttl_s,
        }
        if dispatch:
            claims["roomConfig"] = {
                "agents": [{"agentName": agent_name or self.agent_name, "metadata": metadata}]
            }
        return MintedToken(jwt=self._signed(claims), expires_at=now + self.ttl_s)

    def _signed(self, claims: dict[str, object]) -> str:
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        message = f"{_HS256_HEADER}.{payload}".encode("ascii")
        mac = self._mac.copy()
        mac.update(message)
        return f"{_HS256_HEADER}.{payload}.{_b64(mac.digest())}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_HS256_HEADER = _b64(b'{"alg":"HS256","typ":"JWT"}')


@dataclass(frozen=True)
class OperatorGrant:
    """What a person needs to join one live call (an admin's token or a ring's join link)."""

    server_url: str
    token: str = field(repr=False)
    room: str
    identity: str
    call_id: str
    expires_at: int

    def join_path(self) -> str:
        """The page's path with the server and token in the fragment (never sent to a server)."""
        return f"{OPERATOR_PAGE_PATH}#{urlencode({'url': self.server_url, 'token': self.token})}"


def is_operator(identity: str) -> bool:
    """Whether a participant joined with an operator token (an answer to a ringing call)."""
    return identity.startswith(OPERATOR_PREFIX)


def mint_operator_grant(
    *,
    server_url: str,
    api_key: str,
    api_secret: str,
    room: str,
    call_id: str,
    name: str,
    actor: str,
    ttl_s: int = OPERATOR_TTL_S,
) -> OperatorGrant:
    """A person's token for one live call, under a fresh operator identity: that room only, a
    short life, microphone and data only, no dispatch, and the attribute that tells the kiosk
    an operator is vouched for (which the holder cannot change: no `can_update_own_metadata`).
    Audited (who, for which call, as whom); the token itself is never logged."""
    identity = f"{OPERATOR_PREFIX}{secrets.token_hex(4)}"
    grants = VideoGrants(
        room_join=True,
        room=room,
        can_subscribe=True,
        can_publish=True,
        can_publish_data=True,
        can_publish_sources=["microphone"],
        can_update_own_metadata=False,
    )
    minted = _access_token(
        api_key, api_secret, identity=identity, name=name, ttl_s=ttl_s, grants=grants,
        attributes={OPERATOR_ATTRIBUTE: OPERATOR_ROLE},
    )  # fmt: skip
    audit.info(
        "operator token minted", extra={"call_id": call_id, "actor": actor, "identity": identity}
    )
    return OperatorGrant(
        server_url=server_url,
        token=minted.jwt,
        room=room,
        identity=identity,
        call_id=call_id,
        expires_at=minted.expires_at,
    )


def mint_diagnostic_token(
    *, api_key: str, api_secret: str, room: str, identity: str, ttl_s: int
) -> MintedToken:
    """A device's token for `appliance doctor` to join and leave one throwaway room: that room
    only, a short life, no dispatch, and nothing to do once in (no publishing of any kind, no
    subscribing, no metadata): a join proves the server, its keys and the network path."""
    grants = VideoGrants(
        room_join=True,
        room=room,
        can_subscribe=False,
        can_publish=False,
        can_publish_data=False,
        can_publish_sources=[],
        can_update_own_metadata=False,
    )
    return _access_token(
        api_key, api_secret, identity=identity, name="appliance doctor", ttl_s=ttl_s,
        grants=grants,
    )  # fmt: skip


def _access_token(
    api_key: str,
    api_secret: str,
    *,
    identity: str,
    name: str,
    ttl_s: int,
    grants: VideoGrants,
    attributes: dict[str, str] | None = None,
) -> MintedToken:
    """A token through `livekit-api`'s `AccessToken`, for the rare ones (not a call's)."""
    token = (
        AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_name(name)
        .with_ttl(timedelta(seconds=ttl_s))
        .with_grants(grants)
    )
    if attributes:
        token = token.with_attributes(attributes)
    jwt = token.to_jwt()
    return MintedToken(jwt=jwt, expires_at=decoded_exp(jwt))


def decoded_exp(token: str) -> int:
    """The `exp` claim of a JWT just signed (its payload segment, not verified)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return int(claims["exp"])
