"""Fixtures: a config file in tmp_path, a running backend, an HTTP client, and test devices."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from provisioning.config import Config, DatabaseConfig, load_config
from provisioning.http import BackendServer
from provisioning.rooms import RecordingRoomService
from provisioning.storage import SqlStorage, open_storage

API_KEY = "test-key"
API_SECRET = "test-secret-0123456789abcdef0123456789"
AGENT_NAME = "test-agent"
TOKEN_TTL_S = 900
MAX_SKEW_S = 30
LIVEKIT_URL = "ws://127.0.0.1:7880"
TIMEOUT_S = 10.0


class FakeClock:
    """A settable clock, starting at the real time so LiveKit's own `exp` stays comparable."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class TestDevice:
    """A device-side signer written from docs/api.md, independent of the backend's code."""

    __test__ = False
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public_raw(self) -> bytes:
        return self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def public_key(self) -> str:
        return b64url(self.public_raw)

    @property
    def device_id(self) -> str:
        return "d-" + hashlib.sha256(self.public_raw).hexdigest()[:16]

    def headers(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        timestamp: int,
        nonce: str | None = None,
        device_id: str | None = "",
        signer: Ed25519PrivateKey | None = None,
    ) -> dict[str, str]:
        nonce = secrets.token_hex(16) if nonce is None else nonce
        message = "\n".join(
            [
                "kiosk-v1",
                method.upper(),
                path,
                str(timestamp),
                nonce,
                hashlib.sha256(body).hexdigest(),
            ]
        ).encode("utf-8")
        signature = (signer or self.key).sign(message)
        headers = {
            "Content-Type": "application/json",
            "X-Device-Timestamp": str(timestamp),
            "X-Device-Nonce": nonce,
            "X-Device-Signature": b64url(signature),
        }
        if device_id is not None:
            headers["X-Device-Id"] = device_id or self.device_id
        return headers


def write_config(
    directory: Path, extra: str = "", *, database_url: str | None = None, **calls: Any
) -> Path:
    """A complete config file; `calls` overrides keys of [calls]; SQLite unless a URL is given."""
    database = (
        'path = "state/db.sqlite3"' if database_url is None else f"url = {json.dumps(database_url)}"
    )
    calls_table = {"agent_name": AGENT_NAME, "token_ttl_s": TOKEN_TTL_S, **calls}
    calls_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in calls_table.items())
    path = directory / "provisioning.toml"
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = 0

[database]
{database}

[livekit]
url = "{LIVEKIT_URL}"
api_key = "{API_KEY}"
api_secret = "{API_SECRET}"

[calls]
{calls_lines}

[auth]
max_clock_skew_s = {MAX_SKEW_S}
{extra}
""",
        encoding="utf-8",
    )
    path.chmod(0o600)  # it holds the secret inline
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """Each test using it runs twice: on SQLite (None) and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn


@pytest.fixture
def config(tmp_path: Path, database_url: str | None) -> Config:
    return load_config(write_config(tmp_path, database_url=database_url))


@pytest.fixture
def rooms() -> RecordingRoomService:
    """LiveKit's room service as the backend's tests see it: what was asked, recorded."""
    return RecordingRoomService()


@pytest.fixture
async def server(
    config: Config, clock: FakeClock, rooms: RecordingRoomService
) -> AsyncIterator[BackendServer]:
    backend = BackendServer(config, port=0, clock=clock, rooms=rooms)
    async with asyncio.timeout(TIMEOUT_S):
        await backend.start()
    try:
        yield backend
    finally:
        async with asyncio.timeout(TIMEOUT_S):
            await backend.aclose()


class Api:
    """Sends signed requests to the running backend, every await bounded."""

    def __init__(self, client: httpx.AsyncClient, clock: FakeClock) -> None:
        self.client = client
        self.clock = clock

    async def send(
        self,
        method: str,
        path: str,
        device: TestDevice | None,
        payload: Any = None,
        *,
        raw: bytes | None = None,
        **sign: Any,
    ) -> httpx.Response:
        body = (
            raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        )
        headers: dict[str, str] = {}
        if device is not None:
            sign.setdefault("timestamp", int(self.clock.now))
            headers = device.headers(method, path, body, **sign)
        async with asyncio.timeout(TIMEOUT_S):
            return await self.client.request(method, path, content=body, headers=headers)

    async def enroll(self, device: TestDevice, code: str, name: str = "kiosk") -> httpx.Response:
        payload = {"code": code, "public_key": device.public_key, "name": name}
        return await self.send("POST", "/v1/enroll", device, payload, device_id=None)

    async def start_call(
        self, device: TestDevice, fields: dict[str, Any] | None = None, **sign: Any
    ) -> httpx.Response:
        payload = {"trigger": "button", **(fields or {})}
        return await self.send("POST", "/v1/calls", device, payload, **sign)


@pytest.fixture
async def api(server: BackendServer, clock: FakeClock) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT_S) as client:
        yield Api(client, clock)


@pytest.fixture
async def enrolled(server: BackendServer, api: Api) -> TestDevice:
    device = TestDevice()
    response = await api.enroll(device, await server.core.create_enrollment_code(label="fixture"))
    assert response.status_code == 201, response.text
    return device


def assert_refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert "token" not in body


def database_config(tmp_path: Path, url: str | None) -> DatabaseConfig:
    if url is None:
        return DatabaseConfig(path=tmp_path / "db" / "state.sqlite3")
    return DatabaseConfig(url=url)


@pytest.fixture
async def storage(tmp_path: Path, database_url: str | None) -> AsyncIterator[SqlStorage]:
    async with asyncio.timeout(TIMEOUT_S):
        store = await open_storage(database_config(tmp_path, database_url))
    try:
        yield store
    finally:
        await store.aclose()
