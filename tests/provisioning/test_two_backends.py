"""Two backend processes on one PostgreSQL serve one fleet: codes spent once, nonces seen once."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from .conftest import TIMEOUT_S, TestDevice, write_config

pytestmark = pytest.mark.integration


async def serve(config: Path, stack: AsyncExitStack) -> str:
    """Start `provisioning serve` as its own process; return its URL; stopped by `stack`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "provisioning",
        "--config",
        str(config),
        "serve",
        stderr=asyncio.subprocess.PIPE,
    )

    async def stop() -> None:
        if process.returncode is None:
            process.terminate()
        async with asyncio.timeout(TIMEOUT_S):
            await process.communicate()

    stack.push_async_callback(stop)
    assert process.stderr is not None
    async with asyncio.timeout(TIMEOUT_S * 2):
        while True:
            line = (await process.stderr.readline()).decode()
            assert line, "serve exited before listening"
            if line.startswith("listening on "):
                return line.removeprefix("listening on ").strip()


async def create_code(config: Path) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "provisioning",
        "--config",
        str(config),
        "enroll-code",
        "create",
        stdout=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(TIMEOUT_S * 2):
        out, _ = await process.communicate()
    assert process.returncode == 0
    return out.decode().strip()


class Signed:
    """Builds signed requests that can be sent to either backend, or replayed."""

    def __init__(self, device: TestDevice) -> None:
        self.device = device

    def enroll(self, code: str) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(
            {"code": code, "public_key": self.device.public_key, "name": "kiosk"}
        ).encode()
        return body, self.device.headers(
            "POST", "/v1/enroll", body, timestamp=_now(), device_id=None
        )

    def call(self) -> tuple[bytes, dict[str, str]]:
        body = b'{"trigger": "button"}'
        return body, self.device.headers("POST", "/v1/calls", body, timestamp=_now())


def _now() -> int:
    return int(time.time())


@pytest.fixture
async def two_backends(
    tmp_path: Path, postgres_dsn: str
) -> AsyncIterator[tuple[Path, httpx.AsyncClient, httpx.AsyncClient]]:
    config = write_config(tmp_path, database_url=postgres_dsn)
    async with AsyncExitStack() as stack:
        # Started together: both migrate the same empty database at once.
        url_a, url_b = await asyncio.gather(serve(config, stack), serve(config, stack))
        a = await stack.enter_async_context(httpx.AsyncClient(base_url=url_a, timeout=TIMEOUT_S))
        b = await stack.enter_async_context(httpx.AsyncClient(base_url=url_b, timeout=TIMEOUT_S))
        yield config, a, b


async def test_a_code_is_spent_once_across_backends(
    two_backends: tuple[Path, httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    config, a, b = two_backends
    code = await create_code(config)
    first, second = Signed(TestDevice()), Signed(TestDevice())
    body_1, headers_1 = first.enroll(code)
    body_2, headers_2 = second.enroll(code)
    async with asyncio.timeout(TIMEOUT_S):
        responses = await asyncio.gather(
            a.post("/v1/enroll", content=body_1, headers=headers_1),
            b.post("/v1/enroll", content=body_2, headers=headers_2),
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201, 403], [r.text for r in responses]
    refused = next(r for r in responses if r.status_code == 403)
    assert refused.json()["error"] == "invalid_enrollment_code"


async def test_a_request_replayed_to_the_other_backend_is_refused(
    two_backends: tuple[Path, httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    config, a, b = two_backends
    device = Signed(TestDevice())
    body, headers = device.enroll(await create_code(config))
    async with asyncio.timeout(TIMEOUT_S):
        assert (await a.post("/v1/enroll", content=body, headers=headers)).status_code == 201
        body, headers = device.call()
        started = await a.post("/v1/calls", content=body, headers=headers)
        assert started.status_code == 201, started.text
        replayed = await b.post("/v1/calls", content=body, headers=headers)
    assert replayed.status_code == 401
    assert replayed.json()["error"] == "replayed_request"
    # The fleet is one: a call started through one backend ends through the other.
    call_id = started.json()["call_id"]
    end_body = b'{"reason": "user", "duration_ms": 1200}'
    end_headers = device.device.headers(
        "POST", f"/v1/calls/{call_id}/end", end_body, timestamp=_now()
    )
    async with asyncio.timeout(TIMEOUT_S):
        ended = await b.post(f"/v1/calls/{call_id}/end", content=end_body, headers=end_headers)
    assert ended.status_code == 200, ended.text
