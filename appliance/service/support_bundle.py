"""`appliance support-bundle`: one tar.gz a technician can send, with nothing secret in it.

It holds the settings and board profile with secret values masked, versions, the doctor's
JSON, the last hour of the unit's journal, the audio self-test's result and a listing (names
and modes, never contents) of the state directory. Every text member goes through the same
redaction as the logs, plus masks for enrollment codes and secret-named settings keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from appliance.errors import SettingsError
from appliance.service.doctor import DoctorReport, package_version, run_doctor
from appliance.settings import Settings, load_settings
from appliance.status.redact import redact

UNIT = "kiosk-appliance"
CODE_MASK = "[redacted code]"
SECRET_MASK = "[redacted]"
# A one-time enrollment code: four groups of four from the backend's alphabet.
_CODE = re.compile(r"\b[2-9A-HJ-NP-Z]{4}(?:-[2-9A-HJ-NP-Z]{4}){3}\b")
# `key = "value"` lines whose key names a secret (TOML settings, kiosk.txt).
_SECRET_ASSIGNMENT = re.compile(
    r"(?im)^(?P<head>\s*[\w.-]*(?:secret|token|password|access_key|code|psk|private)[\w.-]*"
    r"\s*[=:]\s*)(?P<value>.+)$"
)
DEPENDENCIES = (
    "livekit",
    "httpx",
    "numpy",
    "cryptography",
    "gpiozero",
    "lgpio",
    "pyalsaaudio",
    "pymicro-wakeword",
    "pvporcupine",
    "systemd-python",
)

Runner = Callable[[list[str]], str]


def scrub(text: str) -> str:
    """`text` without secrets: log redaction, enrollment codes, secret-named settings."""
    text = _SECRET_ASSIGNMENT.sub(lambda m: f"{m.group('head')}{_mask_value(m)}", text)
    return _CODE.sub(CODE_MASK, redact(text))


def _mask_value(match: re.Match[str]) -> str:
    value = match.group("value").strip()
    empty = value in ('""', "''", "")
    return value if empty else f'"{SECRET_MASK}"'


def _run(argv: list[str]) -> str:
    """A command's output (stdout and stderr), or why it could not run."""
    if shutil.which(argv[0]) is None:
        return f"({argv[0]} is not installed)\n"
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=False, errors="replace"
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({' '.join(argv)} failed: {exc})\n"
    return done.stdout + done.stderr


def versions(runner: Runner = _run) -> dict[str, Any]:
    """The firmware's, its dependencies', Python's and the OS's versions."""
    deps: dict[str, str | None] = {}
    for name in DEPENDENCIES:
        try:
            deps[name] = version(name)
        except PackageNotFoundError:
            deps[name] = None
    os_release = ""
    with contextlib.suppress(OSError):
        os_release = Path("/etc/os-release").read_text()
    return {
        "kiosk-voice": package_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "dependencies": deps,
        "os_release": os_release,
        "debian_package": runner(["dpkg-query", "-W", "kiosk-appliance"]).strip(),
    }


def _state_listing(state_dir: Path) -> str:
    """Names, sizes and modes in the state directory (two levels), never file contents."""
    if not state_dir.is_dir():
        return f"{state_dir}: missing\n"
    lines = []
    for path in sorted([state_dir, *state_dir.glob("*"), *state_dir.glob("*/*")]):
        try:
            st = path.lstat()
        except OSError as exc:
            lines.append(f"?          {path}: {exc}")
            continue
        lines.append(f"{stat.filemode(st.st_mode)} {st.st_size:>9} {path}")
    return "\n".join(lines) + "\n"


async def _audio_test(settings: Settings, daemon_running: bool) -> str:
    if settings.board.audio.backend != "alsa":
        return f"no ALSA audio on this board (audio.backend = {settings.board.audio.backend!r})\n"
    if daemon_running:
        return "not run: the running daemon holds the audio devices (stop it to run the test)\n"
    from appliance.audio.selftest import run_audio_test

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        passed = await run_audio_test(settings.board.audio, 3.0)
    return out.getvalue() + ("all passed\n" if passed else "some checks failed\n")


async def build_bundle(
    config: Path,
    output: Path,
    *,
    runner: Runner = _run,
    doctor: Callable[[Path], Any] | None = None,
) -> Path:
    """Write the bundle to `output` (mode 0600) and return its path."""
    report: DoctorReport = await (doctor or run_doctor)(config)
    members, settings = _collect(config, report, runner)
    if settings is not None:
        daemon = next((c for c in report.checks if c.name == "daemon"), None)
        running = daemon is not None and daemon.detail.startswith("running")
        members["audio-test.txt"] = await _audio_test(settings, running)
    return _write_tar(Path(output), members)


def _collect(
    config: Path, report: DoctorReport, runner: Runner
) -> tuple[dict[str, str], Settings | None]:
    members: dict[str, str] = {
        "doctor.json": json.dumps(report.as_dict(), indent=2) + "\n",
        "doctor.txt": report.format() + "\n",
        "versions.json": json.dumps(versions(runner), indent=2) + "\n",
        "journal.txt": runner(
            ["journalctl", "-u", UNIT, "--since", "-1h", "--no-pager", "-o", "short-iso"]
        ),
        "unit-status.txt": runner(["systemctl", "status", "--no-pager", "-n", "0", UNIT]),
    }
    try:
        members["settings.toml"] = Path(config).read_text()
    except OSError as exc:
        members["settings.toml"] = f"# cannot read {config}: {exc}\n"
    try:
        settings: Settings | None = load_settings(config)
    except SettingsError:
        return members, None
    assert settings is not None
    if settings.board.source is not None:
        with contextlib.suppress(OSError):
            members["board-profile.toml"] = settings.board.source.read_text()
    members["state-dir.txt"] = _state_listing(settings.device.state_dir)
    return members, settings


def _write_tar(output: Path, members: dict[str, str]) -> Path:
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    now = int(time.time())
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, text in members.items():
            data = scrub(text).encode()
            info = tarfile.TarInfo(f"kiosk-support/{name}")
            info.size, info.mtime, info.mode = len(data), now, 0o600
            tar.addfile(info, io.BytesIO(data))
    return output


def default_output(now: float | None = None) -> Path:
    """`kiosk-support-<host>-<UTC time>.tar.gz` in the working directory."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return Path(f"kiosk-support-{platform.node() or 'device'}-{stamp}.tar.gz")


def make_bundle(config: Path, output: Path | None) -> Path:
    """Synchronous entry for the CLI."""
    return asyncio.run(build_bundle(config, output or default_output()))
