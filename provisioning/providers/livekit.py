"""The fleet's own LiveKit server as a call provider: today's minter, the agent dispatched by
the token's room configuration. Minting creates nothing, so its grants may be held."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from provisioning.providers.base import CallRequest, ProviderGrant, ProviderKind
from provisioning.tokens import TokenMinter


@dataclass(frozen=True)
class OwnLiveKit:
    """Tokens for `server_url`, minted here; no request leaves the backend."""

    minter: TokenMinter
    server_url: str
    kind: ClassVar[ProviderKind] = ProviderKind.LIVEKIT
    holds_grants: ClassVar[bool] = True

    def mint(self, request: CallRequest) -> ProviderGrant:
        """The token for our room `call-<call_id>`, with our identity (synchronous)."""
        token = self.minter.mint(
            agent_name=request.agent_name,
            identity=request.identity,
            name=request.name,
            room=request.room,
            device_id=request.device_id,
            call_id=request.call_id,
        )
        return ProviderGrant(
            server_url=self.server_url,
            token=token.jwt,
            room=request.room,
            identity=request.identity,
            expires_at=token.expires_at,
        )

    async def open_call(self, request: CallRequest) -> ProviderGrant:
        """`mint`, for the seam."""
        return self.mint(request)
