"""Servers for bench_tokens: a config, a server process pinned to one core, enrolled devices."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from demo.postgres import PostgresCluster
from provisioning.backend import open_backend
from provisioning.config import load_config
from tests.bench.token_load import children
from tests.provisioning.conftest import TestDevice

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
ENROLL_CONCURRENCY = 16
REQUEST_TIMEOUT_S = 10.0
API_KEY = "bench-key"
API_SECRET = "bench-secret-0123456789abcdef0123456789"


def write_config(directory: Path, *, database_url: str | None, max_per_minute: int) -> Path:
    """A backend config for the benchmark: port 0, the widest clock-skew window, SQLite
    in `directory` unless a PostgreSQL URL is given; token TTL and agent as by default."""
    directory.mkdir(parents=True, exist_ok=True)
    database = (
        'path = "db.sqlite3"' if database_url is None else f"url = {json.dumps(database_url)}"
    )
    path = directory / "provisioning.toml"
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = 0

[database]
{database}

[livekit]
url = "ws://127.0.0.1:7880"
api_key = "{API_KEY}"
api_secret = "{API_SECRET}"

[calls]
max_per_minute = {max_per_minute}

[auth]
max_clock_skew_s = 600
""",
        encoding="utf-8",
    )
    path.chmod(0o600)  # it holds the secret inline
    return path


class PinnedServer:
    """`python -m <module> --config X [serve]` on one core, stderr to a file; SIGTERM on exit."""

    def __init__(self, argv: list[str], *, core: int, log: Path) -> None:
        self._argv = ["taskset", "-c", str(core), sys.executable, "-m", *argv]
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> Self:
        with self._log.open("wb") as log:
            # A file, not a pipe: nobody reads it while the load runs, and a full pipe blocks.
            self._proc = subprocess.Popen(
                self._argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for line in self._log.read_text(errors="replace").splitlines():
                if line.startswith("listening on "):
                    self.url = line.removeprefix("listening on ").strip()
                    return self
            if self._proc.poll() is not None:
                break
            time.sleep(0.05)
        self.__exit__(None, None, None)
        tail = self._log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(self._argv)} did not start:\n{tail}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)


def backend(config: Path, *, core: int, log: Path) -> PinnedServer:
    """The provisioning backend, as deployed: `python -m provisioning --config X serve`."""
    return PinnedServer(["provisioning", "--config", str(config), "serve"], core=core, log=log)


def bare_endpoint(config: Path, *, core: int, log: Path) -> PinnedServer:
    """The baseline that mints the same token with nothing else (tests/bench/bare_endpoint.py)."""
    return PinnedServer(["tests.bench.bare_endpoint", "--config", str(config)], core=core, log=log)


async def create_codes(config: Path, count: int) -> list[str]:
    """`count` enrollment codes, as `provisioning enroll-code create` makes them (one process
    for all of them instead of one per code)."""
    async with open_backend(load_config(config)) as opened:
        return [await opened.core.create_enrollment_code(label=f"bench {i}") for i in range(count)]


async def enroll(url: str, codes: list[str]) -> list[TestDevice]:
    """One new device per code, each enrolled with a signed POST /v1/enroll."""
    devices = [TestDevice() for _ in codes]
    gate = asyncio.Semaphore(ENROLL_CONCURRENCY)

    async def one(client: httpx.AsyncClient, device: TestDevice, code: str) -> None:
        body = json.dumps({"code": code, "public_key": device.public_key}).encode()
        headers = device.headers(
            "POST", "/v1/enroll", body, timestamp=int(time.time()), device_id=None
        )
        async with gate:
            response = await client.post("/v1/enroll", content=body, headers=headers)
        if response.status_code != 201:
            raise RuntimeError(f"enrollment refused: {response.status_code} {response.text}")

    async with (
        httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S) as client,
        asyncio.TaskGroup() as group,
    ):
        for device, code in zip(devices, codes, strict=True):
            group.create_task(one(client, device, code), name=f"enroll-{device.device_id}")
    return devices


def private_hex(device: TestDevice) -> str:
    """The device's raw Ed25519 private key, for the load generator's process."""
    return device.key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()


def pin_postgres(cluster: PostgresCluster, core: int) -> int:
    """Pin the postmaster and its processes to `core` (backends forked later inherit it);
    return the postmaster's pid."""
    postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    for pid in [postmaster, *children(postmaster)]:
        os.sched_setaffinity(pid, {core})
    return postmaster
