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

from .admin_fixtures import add_deliveries
from .conftest import TIMEOUT_S, FakeClock, TestDevice, write_config

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


def run(config_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = main(["--config", str(config_path), *args])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def add_pending(config_path: Path, name: str = "lobby") -> TestDevice:
    device = TestDevice()
    code = EnrollmentCode("p-" + device.device_id, "", 1.0e9, 4.0e9, None, None, True)

    async def add(storage: SqlStorage) -> bool:
        await storage.add_enrollment_code(code)
        return await storage.enroll_device(
            Device(device.device_id, device.public_raw, name, DeviceStatus.PENDING, 1.0e9),
            code.code_hash,
            1.0e9,
        )

    assert with_storage(config_path, add)
    return device


def test_admin_tokens_are_printed_once_listed_without_secret_and_revoked(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = run(
        config_path, capsys, "admin-token", "create", "--name", "ops", "--scope", "read-write"
    )
    assert status == 0
    secret = out.strip()
    assert re.fullmatch(r"kadm_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", secret), out
    token_id = secret.split("_")[1]
    status, listing = run(config_path, capsys, "admin-token", "list")
    assert status == 0 and secret[20:] not in listing
    row = next(line for line in listing.splitlines() if token_id in line)
    assert row.split()[1:3] == ["ops", "read-write"] and row.split()[-1] == "-"
    assert run(config_path, capsys, "admin-token", "revoke", "ops") == (
        0,
        f"{token_id} ops revoked\n",
    )
    row = next(
        line
        for line in run(config_path, capsys, "admin-token", "list")[1].splitlines()
        if token_id in line
    )
    assert row.split()[-1] != "-"
    status, err = run(config_path, capsys, "admin-token", "revoke", "ops")
    assert status == 1 and "no active admin token ops" in err
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(config_path), "admin-token", "create", "--name", "x", "--scope", "*"])
    assert exited.value.code == 2


def test_approve_reject_and_the_actions_record(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = add_pending(config_path, "first"), add_pending(config_path, "second")
    assert run(config_path, capsys, "devices", "approve", first.device_id) == (
        0,
        f"{first.device_id} approved\n",
    )
    assert run(config_path, capsys, "devices", "reject", second.device_id) == (
        0,
        f"{second.device_id} rejected\n",
    )
    status, err = run(config_path, capsys, "devices", "approve", second.device_id)
    assert status == 1 and "rejected" in err
    status, out = run(config_path, capsys, "actions", "list")
    lines = out.splitlines()
    assert lines[0].split() == ["AT", "ACTOR", "ACTION", "TARGET", "DETAIL"]
    assert [line.split()[1:4] for line in lines[1:3]] == [
        ["cli", "device.reject", second.device_id],
        ["cli", "device.approve", first.device_id],
    ]


def test_settings_groups_and_show(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    device = add_pending(config_path)
    assert (
        run(config_path, capsys, "groups", "set-settings", "hall", '{"speaker_volume": 0.3}')[0]
        == 0
    )
    assert run(config_path, capsys, "devices", "set-group", device.device_id, "hall")[0] == 0
    settings = '{"wake_word": {"enabled": false}}'
    assert run(config_path, capsys, "devices", "set-settings", device.device_id, settings)[0] == 0
    status, out = run(config_path, capsys, "devices", "show", device.device_id)
    assert status == 0
    shown = dict(line.split(": ", 1) for line in out.splitlines())
    assert shown["group"] == "hall" and shown["status"] == "pending"
    assert shown["effective_settings"] == '{"speaker_volume": 0.3, "wake_word": {"enabled": false}}'
    status, out = run(config_path, capsys, "groups", "list")
    assert out.splitlines()[1].split(None, 1) == ["hall", '{"speaker_volume": 0.3}']
    for bad in ("[1]", "{nope", '{"volume": 1}'):
        status, err = run(config_path, capsys, "devices", "set-settings", device.device_id, bad)
        assert status == 1 and err.startswith("provisioning: "), err
    assert run(config_path, capsys, "devices", "set-group", device.device_id)[0] == 0
    assert "group: -" in run(config_path, capsys, "devices", "show", device.device_id)[1]


def test_enroll_code_requiring_approval_and_the_list(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = run(
        config_path,
        capsys,
        "enroll-code",
        "create",
        "--requires-approval",
        "--group",
        "hall",
        "--label",
        "desk",
    )
    code = out.strip()
    assert status == 0 and CODE.fullmatch(code)
    stored = with_storage(config_path, lambda s: s.get_enrollment_code(hash_code(code)))
    assert stored is not None and stored.requires_approval and stored.group == "hall"
    status, listing = run(config_path, capsys, "enroll-code", "list")
    assert code not in listing and code.replace("-", "") not in listing
    row = listing.splitlines()[1].split()
    assert row[0] == stored.code_hash[:12] and row[-3:] == ["required", "hall", "desk"]


def test_calls_list_filters(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    device, other = add_device(config_path), add_device(config_path, "other")

    async def add(storage: SqlStorage) -> None:
        for call_id, owner, at, reason in (
            ("c-0000000000000001", device, 1.0e9, "user"),
            ("c-0000000000000002", device, 1.1e9, "agent_left"),
            ("c-0000000000000003", other, 1.1e9 + 5, "user"),
        ):
            await storage.add_call(
                CallRecord(call_id, owner.device_id, f"call-{call_id}", "button", at, at + 600)
            )
            await storage.end_call(call_id, at + 10, reason, 10_000)

    with_storage(config_path, add)

    def ids(*args: str) -> list[str]:
        status, out = run(config_path, capsys, "calls", "list", *args)
        assert status == 0, out
        return [line.split()[0] for line in out.splitlines()[1:]]

    assert ids() == ["c-0000000000000001", "c-0000000000000002", "c-0000000000000003"]
    assert ids("--device", device.device_id, "--reason", "user") == ["c-0000000000000001"]
    assert ids("--since", "2004-01-01") == ["c-0000000000000002", "c-0000000000000003"]
    assert ids("--until", "2004-01-01") == ["c-0000000000000001"]
    status, err = run(config_path, capsys, "calls", "list", "--reason", "bored")
    assert status == 1 and "end_reason must be one of" in err


def test_webhooks_list(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def add(storage: SqlStorage) -> tuple[str, str]:
        clock = FakeClock()
        return await add_deliveries(storage.db, clock)

    delivered, failed = with_storage(config_path, add)
    status, out = run(config_path, capsys, "webhooks", "list")
    assert status == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows[delivered][4] == "delivered" and rows[delivered][-2:] == ["HTTP", "204"]
    assert rows[failed][4] == "failed" and rows[failed][5] == "1"
    status, out = run(config_path, capsys, "webhooks", "list", "--state", "failed")
    assert [line.split()[0] for line in out.splitlines()[1:]] == [failed]
