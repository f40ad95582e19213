"""Hostile clients against the real server: bad bodies, bytes and HTTP, slow and many sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import httpx
import pytest

from provisioning.config import load_config
from provisioning.http import BackendServer

from .conftest import TIMEOUT_S, Api, FakeClock, TestDevice, assert_refused, write_config

pytestmark = pytest.mark.integration

SHORT = "header_timeout_s = 1\nbody_timeout_s = 1\nmax_connections = 8\n"


@pytest.fixture
async def tight_server(tmp_path: Path, clock: FakeClock) -> AsyncIterator[BackendServer]:
    """A backend with 1 s header and body timeouts and at most 8 connections."""
    path = write_config(tmp_path)
    text = path.read_text().replace("port = 0\n", "port = 0\n" + SHORT, 1)
    path.write_text(text)
    async with asyncio.timeout(TIMEOUT_S), BackendServer(load_config(path), clock=clock) as server:
        yield server


async def raw_exchange(server: BackendServer, request: bytes, *, wait_s: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server sends back before it closes (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(wait_s):
            return await reader.read(-1)
    finally:
        writer.close()


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def assert_json_refusal(raw: bytes, status: int) -> dict[str, str]:
    got, headers, body = parse(raw)
    assert got == status, raw[:300]
    assert headers["content-type"].startswith("application/json"), headers
    data = json.loads(body)
    assert set(data) == {"error", "message"} and data["message"]
    return data


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n".encode()
        + extra
        + b"Connection: close\r\n\r\n"
        + body
    )


HOSTILE_BODIES = [
    b"[" * 1000 + b"]" * 1000,
    b'{"code": ' + b"[" * 50 + b"]" * 50 + b"}",
    b'{"code": "x", "public_key": 1' + b"0" * 4400 + b"}",
    b'{"code": 1e999999}',
    b'{"code": NaN}',
    b'{"code": "\xff\xfe"}',
    b'{"code": "x"',
    b"[]",
    b"",
]


@pytest.mark.parametrize("body", HOSTILE_BODIES, ids=range(len(HOSTILE_BODIES)))
@pytest.mark.parametrize("path", ["/v1/enroll", "/v1/calls", "/v1/calls/c-1/end"])
async def test_hostile_bodies_get_json_4xx(
    tight_server: BackendServer, path: str, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    raw = await raw_exchange(tight_server, post(path, body))
    status, _, _ = parse(raw)
    assert 400 <= status < 500, raw[:300]
    assert_json_refusal(raw, status)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert await tight_server.core.list_devices() == []


@pytest.mark.parametrize(
    "header",
    [
        b"X-Device-Id: d-\xff\xfe\x80abc\r\n",
        b"X-Device-Id: \x1b[2Jd-0123456789abcdef\r\n",
        b"X-Device-Nonce: \xc3\x28\r\n",
        b"X-Device-Signature: " + b"A" * 5000 + b"\r\n",
    ],
)
@pytest.mark.parametrize("method_path", [("GET", "/v1/device"), ("POST", "/v1/calls")])
async def test_bad_bytes_in_signing_headers_get_json_4xx(
    tight_server: BackendServer,
    header: bytes,
    method_path: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    method, path = method_path
    body = b'{"trigger": "button"}'
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode()
        + header
        + b"X-Device-Timestamp: 1\r\nConnection: close\r\n\r\n"
        + body
    )
    raw = await raw_exchange(tight_server, request)
    status, _, _ = parse(raw)
    assert status in (400, 401), raw[:300]
    assert_json_refusal(raw, status)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    # What reaches the log is escaped: no terminal control character.
    assert not any("\x1b" in r.getMessage() or "\x1b" in str(vars(r)) for r in caplog.records)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /v1/device HTTP/9.9\r\n\r\n",
        b"GET /v1/device HTTP/1.1\r\nBad Header Line\r\n\r\n",
        b"POST /v1/enroll HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/enroll HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
        b"GET /v1/device HTTP/1.1\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    ],
    ids=range(8),
)
async def test_malformed_http_gets_json_without_echo(
    tight_server: BackendServer, request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    raw = await raw_exchange(tight_server, request_bytes)
    status, _, body = parse(raw)
    assert 400 <= status < 500
    data = assert_json_refusal(raw, status)
    assert data["error"] in ("bad_request", "request_too_large", "headers_too_large")
    assert b"GARBAGE" not in body and b"aaaa" not in body and b"bbbb" not in body
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_half_sent_headers_are_closed_in_seconds(tight_server: BackendServer) -> None:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", tight_server.port)
    try:
        writer.write(b"GET /v1/device HTTP/1.1\r\nHost: x\r\n")  # never finished
        await writer.drain()
        async with asyncio.timeout(8):
            assert await reader.read(-1) == b""
    finally:
        writer.close()
    # The header timeout is 1 s; aiohttp's timer may fire up to a second later.
    assert time.monotonic() - started < 4


async def test_half_sent_body_is_refused_and_closed(tight_server: BackendServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", tight_server.port)
    try:
        writer.write(post("/v1/enroll", b"x" * 100)[:-90])  # 10 bytes of 100
        await writer.drain()
        async with asyncio.timeout(8):
            raw = await reader.read(-1)
    finally:
        writer.close()
    assert assert_json_refusal(raw, 408)["error"] == "request_timeout"


async def test_connections_over_the_limit_get_503_and_the_server_recovers(
    tight_server: BackendServer, api: Api
) -> None:
    idle = [await asyncio.open_connection("127.0.0.1", tight_server.port) for _ in range(8)]
    try:
        raw = await raw_exchange(tight_server, b"GET /v1/device HTTP/1.1\r\nHost: x\r\n\r\n")
        assert assert_json_refusal(raw, 503)["error"] == "overloaded"
    finally:
        for _, writer in idle:
            writer.close()
    # The idle ones are gone (closed by us, or by the header timeout): service is back.
    async with asyncio.timeout(8):
        while True:
            raw = await raw_exchange(tight_server, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
            if parse(raw)[0] == 404:
                break
            await asyncio.sleep(0.2)


async def test_a_flood_of_refusals_writes_bounded_log(
    tight_server: BackendServer, tmp_path: Path
) -> None:
    from provisioning.logs import ContextFormatter, FloodFilter

    log_path = tmp_path / "backend.log"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(ContextFormatter())
    handler.addFilter(FloodFilter(burst=20, window_s=60))
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    try:
        for _ in range(300):
            await raw_exchange(tight_server, post("/v1/calls", b"[" * 100))
            await raw_exchange(tight_server, b"NOT HTTP\r\n\r\n")
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()
    lines = log_path.read_text().splitlines()
    refused = [line for line in lines if "request refused" in line]
    assert 0 < len(refused) <= 40, len(refused)
    # Each line carries its context, readable in the text format.
    assert any("error_code=bad_request" in line and "path=/v1/calls" in line for line in lines)
    assert len(log_path.read_bytes()) < 20_000


async def test_a_database_locked_by_another_process_blocks_only_what_writes(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("[database]\n", "[database]\ntimeout_s = 1\n"))
    config = load_config(path)
    script = (
        "import sqlite3, time\n"
        f"db = sqlite3.connect({str(config.database.path)!r}, isolation_level=None)\n"
        "db.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(6)\n"
        "db.execute('COMMIT')\n"
    )
    async with (
        asyncio.timeout(30),
        BackendServer(config, port=0, clock=clock) as server,
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT_S) as client,
    ):
        api = Api(client, clock)
        device = TestDevice()
        code = await server.core.create_enrollment_code()
        assert (await api.enroll(device, code)).status_code == 201
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert holder.stdout is not None
            assert (await holder.stdout.readline()).strip() == b"locked"
            # Requests that need no write answer at once.
            for _ in range(3):
                started = time.monotonic()
                assert (await client.get("/nowhere")).status_code == 404
                response = await api.send("POST", "/v1/calls", None, {"trigger": "button"})
                assert_refused(response, 401, "missing_signature")
                assert time.monotonic() - started < 0.5
            # One that must write (its nonce) waits for the timeout, then is told to retry.
            started = time.monotonic()
            response = await api.start_call(device)
            assert_refused(response, 503, "storage_unavailable")
            assert int(response.headers["Retry-After"]) >= 1
            assert time.monotonic() - started < 4

            # Meanwhile, other requests are still served.
            async def timed(request: Awaitable[httpx.Response]) -> tuple[int, float]:
                begun = time.monotonic()
                return (await request).status_code, time.monotonic() - begun

            slow, fast = await asyncio.gather(
                timed(api.start_call(device)), timed(client.get("/nowhere"))
            )
            assert fast[0] == 404 and fast[1] < 0.5, fast
            assert slow[0] == 503 and slow[1] > 0.5, slow
        finally:
            await holder.wait()
        assert (await api.start_call(device)).status_code == 201
