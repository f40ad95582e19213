"""Minting of LiveKit access tokens: the only module that builds grants."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from livekit.api import AccessToken, VideoGrants
from livekit.protocol.agent_dispatch import RoomAgentDispatch
from livekit.protocol.room import RoomConfiguration

# Set in an operator's token; the kiosk accepts end-call messages from the agent and from
# participants carrying it (appliance/call/livekit_call.py reads the same pair).
OPERATOR_ATTRIBUTE = "kiosk.role"
OPERATOR_ROLE = "operator"


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
    ) -> MintedToken:
        """A token for `identity` to join `room` and nothing else; `agent_name` (or the
        minter's own) is dispatched into the room."""
        ...


@dataclass(frozen=True)
class LiveKitTokenMinter:
    """Mints one-room, microphone-only tokens for the fleet's own LiveKit server that
    dispatch the configured agent."""

    api_key: str
    api_secret: str = field(repr=False)
    agent_name: str
    ttl_s: int

    def mint(
        self,
        *,
        identity: str,
        name: str,
        room: str,
        device_id: str,
        call_id: str,
        agent_name: str | None = None,
    ) -> MintedToken:
        """A token for `identity` to join `room`; everything else is fixed here."""
        metadata = json.dumps({"device_id": device_id, "call_id": call_id})
        grants = VideoGrants(
            room_join=True,
            room=room,
            can_subscribe=True,
            can_publish=True,
            can_publish_data=True,
            can_publish_sources=["microphone"],
            # The kiosk keeps its state in its own participant attributes, for whoever joins
            # late (docs/calls-with-people.md). This also lets it change its own name and
            # metadata: nothing trusts a kiosk's for anything.
            can_update_own_metadata=True,
        )
        room_config = RoomConfiguration(
            agents=[RoomAgentDispatch(agent_name=agent_name or self.agent_name, metadata=metadata)]
        )
        token = (
            AccessToken(self.api_key, self.api_secret)
            .with_identity(identity)
            .with_name(name)
            .with_ttl(timedelta(seconds=self.ttl_s))
            .with_metadata(metadata)
            .with_grants(grants)
            .with_room_config(room_config)
            .to_jwt()
        )
        # AccessToken stamps `exp` from its own clock; read it back rather than guess (the
        # payload segment only: a full decode costs a third of the mint again).
        return MintedToken(jwt=token, expires_at=_exp_of(token))


def mint_operator_token(
    *, api_key: str, api_secret: str, room: str, identity: str, name: str, ttl_s: int
) -> MintedToken:
    """A person's token for one live call: that room only, a short life, microphone and
    data only, no dispatch, and the attribute that tells the kiosk an operator is vouched
    for (which the holder cannot change: no `can_update_own_metadata`)."""
    grants = VideoGrants(
        room_join=True,
        room=room,
        can_subscribe=True,
        can_publish=True,
        can_publish_data=True,
        can_publish_sources=["microphone"],
        can_update_own_metadata=False,
    )
    token = (
        AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_name(name)
        .with_ttl(timedelta(seconds=ttl_s))
        .with_attributes({OPERATOR_ATTRIBUTE: OPERATOR_ROLE})
        .with_grants(grants)
        .to_jwt()
    )
    return MintedToken(jwt=token, expires_at=_exp_of(token))


def _exp_of(token: str) -> int:
    """The `exp` claim of a JWT we just signed."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return int(claims["exp"])
