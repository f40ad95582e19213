"""A backend on SQLite (real HTTP) and a device's settings next to it, for the service tests."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from appliance.provisioning_client.enrollment import enroll_device
from demo.livekit_server import LOOPBACK, free_port
from provisioning.config import load_config
from provisioning.http import BackendServer
from provisioning.rooms import RecordingRoomService

API_KEY = "doctor-key"
API_SECRET = "doctor-secret-0123456789abcdef0123456789"


def write_backend_config(directory: Path, livekit_url: str, api_key: str, secret: str) -> Path:
    """A backend config whose LiveKit is `livekit_url` (a dead port is fine for most tests)."""
    directory.mkdir(parents=True, exist_ok=True)
    secret_file = directory / "livekit-api-secret"
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret)
    path = directory / "provisioning.toml"
    path.write_text(
        f'[server]\nhost = "{LOOPBACK}"\nport = 0\n\n[database]\npath = "db.sqlite3"\n\n'
        f"[livekit]\nurl = {json.dumps(livekit_url)}\napi_key = {json.dumps(api_key)}\n"
        'api_secret_file = "livekit-api-secret"\n\n[calls]\nagent_name = "doctor-agent"\n'
    )
    return path


def write_device_config(directory: Path, backend_url: str, extra: str = "") -> Path:
    """Settings of a simulated device (wake word off unless `extra` says otherwise)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "speaker").mkdir(exist_ok=True)
    path = directory / "appliance.toml"
    path.write_text(
        f'[device]\nname = "doctor-kiosk"\nstate_dir = "state"\n\n'
        f"[backend]\nurl = {json.dumps(backend_url)}\ntimeout_s = 3\n\n"
        '[board]\nprofile = "simulated"\n\n'
        '[simulated]\nspeaker_wav = "speaker/out.wav"\n\n' + (extra or '[wake]\nengine = "off"\n')
    )
    return path


BackendFactory = Callable[..., Awaitable[BackendServer]]


@pytest.fixture
async def make_backend(tmp_path: Path) -> AsyncIterator[BackendFactory]:
    """Starts backends (LiveKit at a dead port unless given); all stopped at the end."""
    started: list[BackendServer] = []

    async def make(
        livekit_url: str | None = None, api_key: str = API_KEY, secret: str = API_SECRET
    ) -> BackendServer:
        url = livekit_url or f"ws://{LOOPBACK}:{free_port()}"
        config = write_backend_config(tmp_path / f"backend{len(started)}", url, api_key, secret)
        server = BackendServer(load_config(config), port=0, rooms=RecordingRoomService())
        async with asyncio.timeout(10):
            await server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        async with asyncio.timeout(10):
            await server.aclose()


async def enroll(backend: BackendServer, config: Path) -> None:
    """Enroll the device of `config` with a fresh one-time code, as a technician would."""
    from appliance.settings import load_settings

    settings = load_settings(config)
    code = await backend.core.create_enrollment_code(ttl_s=600, label="doctor")
    async with asyncio.timeout(10):
        await enroll_device(settings.device.state_dir, settings.backend.url, "doctor-kiosk", code)
