"""The baseline of bench_tokens: POST /v1/calls mints the backend's token with no auth, no database.

This is what the hosted platforms' token-server examples do (an HTTP handler that
builds an `AccessToken` and returns it): the same grants, room configuration,
metadata and TTL as the backend's, through the same `LiveKitTokenMinter`, and the
same JSON answer, but nothing checks who asks and nothing is stored.

Run: `python -m tests.bench.bare_endpoint --config provisioning.toml`; it listens on
the config's `[server]` host and port (0 picks one) and prints `listening on URL` on
stderr, as `provisioning serve` does. SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from provisioning.config import load_config
from provisioning.http import iso_utc
from provisioning.tokens import LiveKitTokenMinter

MINTER_KEY = web.AppKey("minter", LiveKitTokenMinter)
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


def create_app(minter: LiveKitTokenMinter, server_url: str) -> web.Application:
    """One route, POST /v1/calls, minting with `minter`."""
    app = web.Application()
    app[MINTER_KEY] = minter
    app[SERVER_URL_KEY] = server_url
    app.router.add_post("/v1/calls", _start_call)
    return app


async def serve(config_path: str) -> None:
    """Serve until SIGTERM or SIGINT, with the key pair, agent and TTL of `config_path`."""
    config = load_config(config_path)
    minter = LiveKitTokenMinter(
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
