"""The `provisioning` command: admin subcommands in-process, `serve` as a real subprocess."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from provisioning.cli import main
from provisioning.config import load_config
from provisioning.core import CODE_ALPHABET, hash_code
from provisioning.models import CallRecord, Device, DeviceStatus, EnrollmentCode, FlagReason
from provisioning.storage import SqlStorage, open_storage

from .conftest import TIMEOUT_S, TestDevice, write_config

pytestmark = pytest.mark.integration

CODE = re.compile(rf"[{CODE_ALPHABET}]{{4}}(-[{CODE_ALPHABET}]{{4}}){{3}}")
T = TypeVar("T")


def with_storage(config_path: Path, use: Callable[[SqlStorage], Awaitable[T]]) -> T:
    """Run `use` on the configured database, opened the way the backend opens it."""

    async def run() -> T:
        storage = await open_storage(load_config(config_path).database)
        try:
            return await use(storage)
        finally:
            await storage.aclose()

    return asyncio.run(run())


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def add_device(config_path: Path, name: str = "hall") -> TestDevice:
    device = TestDevice()
    code = EnrollmentCode("h-" + device.device_id, "", 1.0e9, 4.0e9, None, None)

    async def add(storage: SqlStorage) -> bool:
        await storage.add_enrollment_code(code)
        enrolled = await storage.enroll_device(
            Device(device.device_id, device.public_raw, name, DeviceStatus.APPROVED, 1.0e9),
            code.code_hash,
            1.0e9,
        )
        return enrolled is not None

    assert with_storage(config_path, add)
    return device


def test_enroll_code_create_prints_only_the_code(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(config_path), "enroll-code", "create", "--label", "lobby"]) == 0
    out = capsys.readouterr().out
    assert CODE.fullmatch(out.strip()), out
    assert out.count("\n") == 1
    stored = with_storage(config_path, lambda s: s.get_enrollment_code(hash_code(out.strip())))
    assert stored is not None
    assert stored.label == "lobby"
    assert stored.expires_at - stored.created_at == 3600
    assert stored.used_at is None


def test_enroll_code_ttl(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config_path), "enroll-code", "create", "--ttl", "90"]) == 0
    code = capsys.readouterr().out.strip()
    stored = with_storage(config_path, lambda s: s.get_enrollment_code(hash_code(code)))
    assert stored is not None
    assert stored.expires_at - stored.created_at == 90


def test_codes_differ(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    codes = set()
    for _ in range(5):
        main(["--config", str(config_path), "enroll-code", "create"])
        codes.add(capsys.readouterr().out.strip())
    assert len(codes) == 5


def test_devices_list_and_revoke(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    device = add_device(config_path, name="front desk")
    assert main(["--config", str(config_path), "devices", "list"]) == 0
    listing = capsys.readouterr().out
    assert device.device_id in listing and "approved" in listing and "front desk" in listing

    assert main(["--config", str(config_path), "devices", "revoke", device.device_id]) == 0
    assert capsys.readouterr().out.strip() == f"{device.device_id} revoked"
    stored = with_storage(config_path, lambda s: s.get_device(device.device_id))
    assert stored is not None and stored.status is DeviceStatus.REVOKED


def test_devices_list_shows_the_flag(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    device = add_device(config_path, name="lobby")
    other = add_device(config_path, name="hall")
    flagged_at = 1.5e9  # 2017-07-14T02:40:00Z
    assert with_storage(
        config_path,
        lambda s: s.flag_device(device.device_id, FlagReason.NON_AUDIO_TRACK, flagged_at),
    )
    assert main(["--config", str(config_path), "devices", "list"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "DEVICE_ID",
        "STATUS",
        "SEEN",
        "OFFLINE",
        "GROUP",
        "CREATED",
        "FLAGGED",
        "FLAG",
        "NAME",
    ]
    flagged = next(row for row in rows if device.device_id in row)
    assert "2017-07-14T02:40:00Z" in flagged and "non_audio_track" in flagged
    clean = next(row for row in rows if other.device_id in row)
    assert clean.split()[6:8] == ["-", "-"]


def test_revoke_unknown_device_fails(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config_path), "devices", "revoke", "d-0000000000000000"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "d-0000000000000000" in captured.err


def test_calls_list(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    device = add_device(config_path)

    async def add(storage: SqlStorage) -> bool:
        await storage.add_call(
            CallRecord(
                "c-00112233aabbccdd",
                device.device_id,
                "call-c-00112233aabbccdd",
                "button",
                1.0e9,
                1.0e9 + 600,
            )
        )
        # Stored as an older backend could have: free text, with a terminal escape in it.
        return await storage.end_call("c-00112233aabbccdd", 1.0e9 + 30, "user\x1b[2J", 29000)

    assert with_storage(config_path, add)
    assert main(["--config", str(config_path), "calls", "list"]) == 0
    listing = capsys.readouterr().out
    row = next(line for line in listing.splitlines() if "c-00112233aabbccdd" in line)
    assert device.device_id in row and "29000" in row
    assert "\x1b" not in listing and "user\\x1b[2J" in row


def test_malformed_config_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, token_ttl_s=10)
    assert main(["--config", str(path), "devices", "list"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert str(path) in lines[0] and "[calls] token_ttl_s" in lines[0]


async def test_serve_answers_and_stops_on_sigterm(config_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "provisioning",
        "--config",
        str(config_path),
        "serve",
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                line = (await process.stderr.readline()).decode()
                assert line, "serve exited before listening"
                if line.startswith("listening on "):
                    url = line.removeprefix("listening on ").strip()
                    break
            async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S) as client:
                response = await client.get("/v1/device")
            assert response.status_code == 401
            assert response.json()["error"] == "missing_signature"
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await asyncio.wait_for(process.wait(), TIMEOUT_S)
