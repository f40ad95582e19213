"""The baseline of bench_tokens: POST /v1/calls mints the backend's token with no auth, no database.

This is what the hosted platforms' token-server examples do (an HTTP handler that
builds a `livekit-api` `AccessToken` and returns it): the same claims as the backend's
token (grants, room configuration, metadata and TTL; tests/provisioning/test_tokens.py
holds the two equal) and the same JSON answer, but nothing checks who asks and nothing
is stored. The backend signs its tokens itself (`LiveKitTokenMinter`, cheaper than
`AccessToken`); this endpoint mints the way the examples do.

Run: `python -m tests.bench.bare_endpoint --config provisioning.toml`; it listens on
the config's `[server]` host and port (0 picks one) and prints `listening on URL` on
stderr, as `provisioning serve` does. SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from aiohttp import web
from livekit.api import AccessToken, VideoGrants
from livekit.protocol.agent_dispatch import RoomAgentDispatch
from livekit.protocol.room import RoomConfiguration

from provisioning.config import load_config
from provisioning.http import iso_utc
from provisioning.tokens import MintedToken, decoded_exp


@dataclass(frozen=True)
class AccessTokenMinter:
    """The backend's call token (same grants, dispatch, metadata, TTL) built the way the
    examples build theirs: `livekit-api`'s `AccessToken`."""

    api_key: str
    api_secret: str = field(repr=False)
    agent_name: str
    ttl_s: int

    def mint(
        self, *, identity: str, name: str, room: str, device_id: str, call_id: str
    ) -> MintedToken:
        """A token for `identity` to join `room`."""
        metadata = json.dumps({"device_id": device_id, "call_id": call_id})
        grants = VideoGrants(
            room_join=True,
            room=room,
            can_subscribe=True,
            can_publish=True,
            can_publish_data=True,
            can_publish_sources=["microphone"],
            can_update_own_metadata=True,
        )
        room_config = RoomConfiguration(
            agents=[RoomAgentDispatch(agent_name=self.agent_name, metadata=metadata)]
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
        return MintedToken(jwt=token, expires_at=decoded_exp(token))


MINTER_KEY = web.AppKey("minter", AccessTokenMinter)
SERVER_URL_KEY = web.AppKey("server_url", str)


async def _start_call(request: web.Request) -> web.Response:
    await request.json()  # the examples read the caller's choices; nothing here depends on them
    device_id = "d-" + secrets.token_hex(8)
    call_id = "c-" + secrets.token_hex(8)
    room = f"call-{call_id}"
    identity = f"device-{device_id}"
    token = request.app[MINTER_KEY].mint(
        identity=identity, name=device_id, room=room, device_id=device_id, call_id=call_id
    )
    return web.json_response(
        {
            "server_url": request.app[SERVER_URL_KEY],
            "token": token.jwt,
            "room": room,
            "identity": identity,
            "call_id": call_id,
            "expires_at": iso_utc(token.expires_at),
        },
        status=201,
    )


def create_app(minter: AccessTokenMinter, server_url: str) -> web.Application:
    """One route, POST /v1/calls, minting with `minter`."""
    app = web.Application()
    app[MINTER_KEY] = minter
    app[SERVER_URL_KEY] = server_url
    app.router.add_post("/v1/calls", _start_call)
    return app


async def serve(config_path: str) -> None:
    """Serve until SIGTERM or SIGINT, with the key pair, agent and TTL of `config_path`."""
    config = load_config(config_path)
    minter = AccessTokenMinter(
        api_key=config.livekit.api_key,
        api_secret=config.livekit.api_secret,
        agent_name=config.calls.agent_name,
        ttl_s=config.calls.token_ttl_s,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # No access log, as in the backend: it would be most of the work per request.
    runner = web.AppRunner(create_app(minter, config.livekit.url), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.server.host, config.server.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        print(f"listening on http://{host}:{port}", file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a provisioning config file")
    asyncio.run(serve(parser.parse_args(argv).config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
