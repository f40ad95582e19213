"""`appliance doctor` on a healthy device and on a device with each fault the catalogue names."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.control import ControlServer
from appliance.service.codes import ErrorCode
from appliance.service.doctor import DoctorReport, Verdict, run_doctor
from demo.livekit_server import LOOPBACK, LiveKitServer, free_port
from tests.appliance.service.conftest import (
    BackendFactory,
    enroll,
    write_device_config,
)

pytestmark = pytest.mark.integration

CHECKS = [
    "settings",
    "device key",
    "enrollment",
    "daemon",
    "backend DNS",
    "backend TLS",
    "backend HTTP",
    "clock offset",
    "credentials",
    "LiveKit",
    "microphone",
    "speaker",
    "wake word",
    "button pins",
    "status LED",
]


async def doctor(config: Path, **kwargs: object) -> DoctorReport:
    async with asyncio.timeout(30):
        return await run_doctor(config, **kwargs)  # type: ignore[arg-type]


def assert_fails_with(report: DoctorReport, check: str, code: ErrorCode) -> None:
    result = report.get(check)
    assert (result.verdict, result.code) == (Verdict.FAIL, code), report.format()
    assert not report.ok
    assert code.value in report.format()


@pytest.mark.e2e
async def test_a_healthy_device_passes_and_a_wrong_livekit_secret_fails(
    tmp_path: Path, make_backend: BackendFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    async with asyncio.timeout(60), LiveKitServer() as livekit:
        backend = await make_backend(livekit.url, livekit.api_key, livekit.api_secret)
        config = write_device_config(tmp_path / "device", backend.url)
        await enroll(backend, config)
        report = await doctor(config)
        assert [c.name for c in report.checks] == CHECKS
        verdicts = {c.name: c.verdict for c in report.checks}
        assert verdicts.pop("daemon") is Verdict.WARN  # not running here
        assert set(verdicts.values()) == {Verdict.PASS}, report.format()
        assert "joined and left a throwaway room" in report.get("LiveKit").detail
        # A diagnostic join is no call: nothing recorded, no grant held.
        assert await backend.core.list_calls() == []
        # The command: exit 0 and JSON.
        code = await asyncio.to_thread(main, ["--config", str(config), "doctor", "--json"])
        out = json.loads(capsys.readouterr().out)
        assert code == 0 and out["ok"] is True
        assert {c["name"]: c["verdict"] for c in out["checks"]}["LiveKit"] == "PASS"
        # A backend whose LiveKit secret is not the server's: LiveKit refuses its tokens.
        wrong = await make_backend(livekit.url, livekit.api_key, "x" * 40)
        config2 = write_device_config(tmp_path / "device2", wrong.url)
        await enroll(wrong, config2)
        report = await doctor(config2)
        assert_fails_with(report, "LiveKit", ErrorCode.LIVEKIT_UNREACHABLE)
        detail = report.get("LiveKit").detail
        assert "401 Unauthorized" in detail and "eyJ" not in detail  # the token is masked
        code = await asyncio.to_thread(main, ["--config", str(config2), "doctor"])
        assert code == 1
        assert "FAIL  LiveKit" in capsys.readouterr().out


async def test_invalid_settings_fail_first_and_skip_the_rest(tmp_path: Path) -> None:
    config = write_device_config(tmp_path, "http://127.0.0.1:1", extra="[nonsense]\nx = 1\n")
    report = await doctor(config)
    assert_fails_with(report, "settings", ErrorCode.SETTINGS_INVALID)
    assert "nonsense" in report.get("settings").detail
    assert {c.verdict for c in report.checks[1:]} == {Verdict.SKIP}
    assert [c.name for c in report.checks] == CHECKS


async def test_a_key_others_can_read(tmp_path: Path, make_backend: BackendFactory) -> None:
    backend = await make_backend()
    config = write_device_config(tmp_path, backend.url)
    await enroll(backend, config)
    (tmp_path / "state" / "device_key.pem").chmod(0o644)
    report = await doctor(config)
    assert_fails_with(report, "device key", ErrorCode.KEY_PROBLEM)
    assert "644" in report.get("device key").detail


async def test_not_enrolled(tmp_path: Path, make_backend: BackendFactory) -> None:
    backend = await make_backend()
    report = await doctor(write_device_config(tmp_path, backend.url))
    assert_fails_with(report, "enrollment", ErrorCode.NOT_ENROLLED)
    assert report.get("credentials").verdict is Verdict.SKIP


@pytest.mark.parametrize(
    ("url", "check", "code"),
    [
        ("http://kiosk-backend.invalid", "backend DNS", ErrorCode.DNS_FAILED),
        ("https://127.0.0.1:{backend_port}", "backend TLS", ErrorCode.TLS_FAILED),
        ("http://127.0.0.1:{free_port}", "backend HTTP", ErrorCode.HTTP_FAILED),
    ],
)
async def test_the_backend_cannot_be_reached(
    tmp_path: Path, make_backend: BackendFactory, url: str, check: str, code: ErrorCode
) -> None:
    backend = await make_backend()
    config = write_device_config(tmp_path, backend.url)
    await enroll(backend, config)
    port = int(backend.url.rsplit(":", 1)[1].strip("/"))
    text = config.read_text().replace(
        backend.url, url.format(backend_port=port, free_port=free_port())
    )
    config.write_text(text)
    report = await doctor(config)
    assert_fails_with(report, check, code)
    assert report.get("LiveKit").verdict is Verdict.SKIP


async def test_a_clock_two_minutes_off(tmp_path: Path, make_backend: BackendFactory) -> None:
    import time

    backend = await make_backend()
    config = write_device_config(tmp_path, backend.url)
    await enroll(backend, config)
    report = await doctor(config, wall_clock=lambda: time.time() - 120)
    assert_fails_with(report, "clock offset", ErrorCode.CLOCK_OFFSET)
    assert 118 < float(report.get("clock offset").detail.split()[0]) < 122
    assert_fails_with(report, "credentials", ErrorCode.CREDENTIALS_REJECTED)
    assert "stale_timestamp" in report.get("credentials").detail


async def test_a_revoked_device(tmp_path: Path, make_backend: BackendFactory) -> None:
    backend = await make_backend()
    config = write_device_config(tmp_path, backend.url)
    await enroll(backend, config)
    (device,) = await backend.core.list_devices()
    await backend.core.revoke_device(device.device_id)
    report = await doctor(config)
    assert_fails_with(report, "credentials", ErrorCode.CREDENTIALS_REJECTED)
    assert "device_revoked" in report.get("credentials").detail


async def test_livekit_down(tmp_path: Path, make_backend: BackendFactory) -> None:
    backend = await make_backend(f"ws://{LOOPBACK}:{free_port()}")
    config = write_device_config(tmp_path, backend.url)
    await enroll(backend, config)
    report = await doctor(config)
    assert report.get("credentials").verdict is Verdict.PASS
    assert_fails_with(report, "LiveKit", ErrorCode.LIVEKIT_UNREACHABLE)
    # The grant came (the backend is up); the join is what failed.
    assert "no grant" not in report.get("LiveKit").detail


async def test_a_running_daemon_in_a_fault_state(tmp_path: Path) -> None:
    config = write_device_config(tmp_path, "http://127.0.0.1:1")
    (tmp_path / "state").mkdir(mode=0o700)
    server = ControlServer(
        tmp_path / "state" / "control.sock", press=lambda: None, status=lambda: "audio_fault"
    )
    await server.start()
    try:
        report = await doctor(config)
    finally:
        await server.aclose()
    assert_fails_with(report, "daemon", ErrorCode.AUDIO_FAULT)
    assert report.get("daemon").detail == "running, state audio_fault"


async def test_hardware_faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    board = tmp_path / "board.toml"
    board.write_text(
        'name = "broken"\n[audio]\nbackend = "simulated"\n'
        '[buttons]\nbackend = "gpio"\ncall_pin = "GPIO99"\n'
        '[leds]\nbackend = "gpio"\nstatus_pin = "GPIO98"\n'
    )
    wake = '[wake]\nengine = "micro"\n[wake.micro]\nmodel = "no-such-model.json"\n'
    config = write_device_config(tmp_path, "http://127.0.0.1:1", extra=wake)
    text = config.read_text().replace('profile = "simulated"', f'profile = "{board}"')
    config.write_text(
        text.replace("[simulated]\n", '[simulated]\nmicrophone_wav = "missing.wav"\n')
    )
    report = await doctor(config)
    assert_fails_with(report, "microphone", ErrorCode.MICROPHONE)
    assert_fails_with(report, "wake word", ErrorCode.WAKE_WORD)
    assert_fails_with(report, "button pins", ErrorCode.BUTTON_PIN)
    assert_fails_with(report, "status LED", ErrorCode.LED_PIN)
    assert report.get("speaker").verdict is Verdict.PASS
