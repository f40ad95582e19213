"""The commands people type: admin issues a code, the device enrolls, runs, is pressed, stops."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from demo.stack import LocalStack

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


async def _run(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        await asyncio.shield(proc.communicate())
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _status(config: Path) -> str | None:
    """The daemon's state, or None while no daemon answers yet."""
    code, out, _ = await _run(str(BIN / "appliance"), "--config", str(config), "status")
    return out.strip() if code == 0 else None


async def _wait_status(config: Path, wanted: str, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while (await _status(config)) != wanted:
            await asyncio.sleep(0.2)


async def test_enroll_run_press_and_stop_from_the_command_line(stack: LocalStack) -> None:
    files = stack.write_device("kiosk-cli", None)
    config = str(files.config)

    code, out, err = await _run(
        str(BIN / "provisioning"),
        "--config",
        str(stack.backend_config),
        "enroll-code",
        "create",
        "--label",
        "kiosk-cli",
    )
    assert code == 0, err
    enrollment_code = out.strip()

    code, out, err = await _run(str(BIN / "appliance"), "--config", config, "key")
    assert code == 0, err
    device_id = out.split()[2]

    code, out, err = await _run(
        str(BIN / "appliance"), "--config", config, "enroll", "--code", enrollment_code
    )
    assert (code, out.strip()) == (0, f"enrolled as {device_id}"), err

    # The code works once: a second device cannot use it.
    other = stack.write_device("kiosk-other", None)
    code, _, err = await _run(
        str(BIN / "appliance"), "--config", str(other.config), "enroll", "--code", enrollment_code
    )
    assert code == 1 and "403 invalid_enrollment_code" in err

    daemon = await asyncio.create_subprocess_exec(
        str(BIN / "appliance"),
        "--config",
        config,
        "run",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await _wait_status(files.config, "ready")
        code, out, _ = await _run(str(BIN / "appliance"), "--config", config, "press")
        assert (code, out.strip()) == (0, "ok")
        session = await stack.agent.next_session(timeout=20)
        await _wait_status(files.config, "in_call")
        await _run(str(BIN / "appliance"), "--config", config, "press")
        await _wait_status(files.config, "ready")
        assert session.room_name.startswith("call-c-")
    finally:
        daemon.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, log = await daemon.communicate()
    assert daemon.returncode == 0
    text = log.decode()
    assert f"DEVICE_ID={device_id}" in text
    assert "state in_call -> ending (user)" in text
    assert "STATE=ready" in text
    # Never a token in the log.
    assert "eyJ" not in text


async def test_bad_settings_exit_2_naming_key_and_file(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text(
        '[device]\nstate_dir = "s"\n[backend]\nurl = "http://x"\ntimeout_s = "soon"\n'
    )
    code, _, err = await _run(str(BIN / "appliance"), "--config", str(config), "run")
    assert code == 2
    assert str(config) in err and "backend.timeout_s" in err


async def test_run_before_enrolling_says_what_to_do(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text(
        '[device]\nstate_dir = "s"\n[backend]\nurl = "http://127.0.0.1:9"\n'
        '[simulated]\nspeaker_wav = "out.wav"\n'
    )
    code, _, err = await _run(str(BIN / "appliance"), "--config", str(config), "run")
    assert code == 3
    assert "appliance enroll --code" in err
