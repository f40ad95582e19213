"""The shipped systemd units verify, keep their documented hardening and run what is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
UNIT_NAMES = sorted(p.name for p in UNITS.glob("*.service"))
HARDENING_DOC = ROOT / "docs" / "hardening.md"
INSTALLED_BIN = re.compile(r"/opt/kiosk-(voice|provisioning)/venv/bin/")

# `systemd-analyze security` rates 0.0 (locked down) to 10.0 (exposed); the issue asked for 4.0.
MAX_EXPOSURE = 4.0
OVERALL = re.compile(r"Overall exposure level for (\S+): (\d+\.\d)")
# A row of the figures table in docs/hardening.md: | `unit` | before ... | after ... |
DOC_ROW = re.compile(r"^\| `(?P<unit>[\w-]+\.service)` \| \d+\.\d\b[^|]*\| (?P<after>\d+\.\d)\b")

# Set in both units (the list); the values as the unit file spells them.
REQUIRED = {
    "NoNewPrivileges": ["yes"],
    "UMask": ["0077"],
    "CapabilityBoundingSet": [""],
    "AmbientCapabilities": [""],
    "SystemCallArchitectures": ["native"],
    "SystemCallFilter": ["@system-service", "~@privileged @resources"],
    "SystemCallErrorNumber": ["EPERM"],
}
LIMIT_NOFILE = {"kiosk-appliance.service": "1024", "kiosk-provisioning.service": "8192"}


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze is missing: scripts/setup installs it")
    return exe


def _service_settings(unit: str) -> dict[str, list[str]]:
    """The unit's [Service] settings, every value of a repeated key in file order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in (UNITS / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def _exposure(unit: str, tmp_path: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    """`systemd-analyze security --offline` of the unit file alone, and its figure."""
    # Under an empty --root, drop-ins installed on this machine for the same name cannot count.
    unit_dir = tmp_path / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    shutil.copy(UNITS / unit, unit_dir / unit)
    threshold = f"--threshold={round(MAX_EXPOSURE * 10)}"
    result = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", f"--root={tmp_path}", threshold, unit],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = OVERALL.search(result.stdout)
    assert found is not None, result.stdout + result.stderr
    assert found.group(1) == unit
    return float(found.group(2)), result


def _documented_exposures() -> dict[str, float]:
    """The "after" figure of each unit in the table of docs/hardening.md."""
    rows = (DOC_ROW.match(line) for line in HARDENING_DOC.read_text().splitlines())
    return {m["unit"]: float(m["after"]) for m in rows if m is not None}


@pytest.mark.parametrize("unit", UNIT_NAMES)
def test_unit_verifies(unit: str, tmp_path: Path) -> None:
    text = (UNITS / unit).read_text()
    assert INSTALLED_BIN.search(text)
    # Point ExecStart at this venv's console scripts, which exist here, then verify.
    local = tmp_path / unit
    local.write_text(INSTALLED_BIN.sub(str(Path(sys.executable).parent) + "/", text))
    result = subprocess.run(
        [_systemd_analyze(), "verify", str(local)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("unit", UNIT_NAMES)
def test_unit_exposure_is_at_most_4_and_documented(unit: str, tmp_path: Path) -> None:
    exposure, result = _exposure(unit, tmp_path)
    assert exposure <= MAX_EXPOSURE, f"{unit}: {exposure} > {MAX_EXPOSURE}\n{result.stdout}"
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr
    documented = _documented_exposures()
    assert unit in documented, f"{HARDENING_DOC.name} has no figures for {unit}"
    assert documented[unit] == exposure, f"{HARDENING_DOC.name} says {documented[unit]}"


@pytest.mark.parametrize("unit", UNIT_NAMES)
def test_unit_sets_the_required_hardening(unit: str) -> None:
    settings = _service_settings(unit)
    for key, values in REQUIRED.items():
        assert settings.get(key) == values, key
    assert settings.get("LimitNOFILE") == [LIMIT_NOFILE[unit]]


def test_appliance_unit_is_a_notify_service_with_private_state() -> None:
    text = (UNITS / "kiosk-appliance.service").read_text()
    assert "Type=notify" in text
    assert "StateDirectoryMode=0700" in text
    assert "User=kiosk" in text


def test_appliance_unit_has_a_watchdog_whose_miss_restarts_it() -> None:
    """appliance/status/watchdog.py pings at half of WatchdogSec=; a missed ping is a failure."""
    settings = _service_settings("kiosk-appliance.service")
    assert settings["WatchdogSec"] == ["30s"]
    # Pings come from the main process; Restart=on-failure covers a watchdog timeout.
    assert settings["NotifyAccess"] == ["main"]
    assert settings["Restart"] == ["on-failure"]


def test_appliance_unit_keeps_its_devices_and_interfaces() -> None:
    """A better score must not cost ALSA, GPIO or WebRTC (docs/hardening.md says why)."""
    settings = _service_settings("kiosk-appliance.service")
    assert settings["DeviceAllow"] == ["char-alsa rw", "char-gpiochip rw", "/dev/gpiomem rw"]
    assert settings["SupplementaryGroups"] == ["audio gpio"]
    assert settings["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    # lgpio makes its FIFOs in the working directory.
    assert settings["WorkingDirectory"] == ["/var/lib/kiosk-voice"]
    # PrivateDevices hides /dev/snd and /dev/gpiochip*, ProcSubset=pid gpiozero's board lookup.
    for breaks_hardware in ("PrivateDevices", "ProcSubset", "PrivateNetwork"):
        assert breaks_hardware not in settings, breaks_hardware
