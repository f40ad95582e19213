"""The shipped systemd units pass `systemd-analyze verify` and run what the package installs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

UNITS = Path(__file__).resolve().parents[2] / "systemd"
INSTALLED_BIN = "/opt/kiosk-voice/venv/bin/"


@pytest.mark.parametrize("unit", sorted(p.name for p in UNITS.glob("*.service")))
def test_unit_verifies(unit: str, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: scripts/setup installs it")
    text = (UNITS / unit).read_text()
    assert INSTALLED_BIN in text
    # Point ExecStart at this venv's console scripts, which exist here, then verify.
    local = tmp_path / unit
    local.write_text(text.replace(INSTALLED_BIN, str(Path(sys.executable).parent) + "/"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_appliance_unit_is_a_notify_service_with_private_state() -> None:
    text = (UNITS / "kiosk-appliance.service").read_text()
    assert "Type=notify" in text
    assert "StateDirectoryMode=0700" in text
    assert "User=kiosk" in text
