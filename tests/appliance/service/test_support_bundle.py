"""`appliance support-bundle`: the expected parts, and no key, token, code or secret in any."""

from __future__ import annotations

import asyncio
import io
import json
import stat
import tarfile
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.provisioning_client import DeviceKey, Enrollment
from appliance.provisioning_client.client import ProvisioningClient
from appliance.service.support_bundle import build_bundle, scrub
from appliance.settings import load_settings
from tests.appliance.service.conftest import BackendFactory, enroll, write_device_config

pytestmark = pytest.mark.integration

ACCESS_KEY = "pv-AccessKey-Zq8Kw3Lm9Xr2Tn5Vb7Yc1Hd4Jf6Gs0Pa=="


def members(path: Path) -> dict[str, str]:
    with tarfile.open(path, "r:gz") as tar:
        return {
            m.name.removeprefix("kiosk-support/"): tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


def test_scrub_masks_codes_tokens_and_secret_keys() -> None:
    text = 'access_key = "abc123"\ncode=ABCD-EF23-GH45-JK67\nname = "lobby"\n'
    out = scrub(text)
    assert "abc123" not in out and "ABCD-EF23-GH45-JK67" not in out
    assert 'name = "lobby"' in out


async def test_the_bundle_holds_what_support_needs_and_no_secret(
    tmp_path: Path, make_backend: BackendFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = await make_backend()
    extra = f'[wake]\nengine = "off"\n[wake.porcupine]\naccess_key = "{ACCESS_KEY}"\n'
    config = write_device_config(tmp_path, backend.url, extra=extra)
    await enroll(backend, config)
    settings = load_settings(config)
    state = settings.device.state_dir
    key_pem = (state / "device_key.pem").read_text()
    # A live token and an unused enrollment code, as they could show in the journal.
    key = DeviceKey.load_or_create(state)
    enrollment = Enrollment.load(state)
    async with ProvisioningClient(backend.url, key, device_id=enrollment.device_id) as client:
        token = (await client.hold_grant()).token
    code = await backend.core.create_enrollment_code(ttl_s=600)
    journal = (
        "kiosk-appliance[1]: state ready -> backend_unreachable\n"
        f"firstboot[2]: enrolling with code {code}\n"
        f"debug: joining with token {token}\n"
        f"oops: {key_pem}\n"
    )

    def runner(argv: list[str]) -> str:
        return journal if argv[0] == "journalctl" else f"({argv[0]}: not here)\n"

    out = tmp_path / "bundle.tar.gz"
    async with asyncio.timeout(30):
        await build_bundle(config, out, runner=runner)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    parts = members(out)
    assert {
        "doctor.json",
        "doctor.txt",
        "versions.json",
        "journal.txt",
        "settings.toml",
        "board-profile.toml",
        "state-dir.txt",
        "audio-test.txt",
        "unit-status.txt",
    } <= parts.keys()
    assert json.loads(parts["doctor.json"])["checks"][0]["name"] == "settings"
    assert json.loads(parts["versions.json"])["kiosk-voice"]
    assert "backend_unreachable" in parts["journal.txt"]  # the journal is there, scrubbed
    assert "device_key.pem" in parts["state-dir.txt"]
    assert "no ALSA audio" in parts["audio-test.txt"]
    blob = "\n".join(parts.values())
    key_body = [line for line in key_pem.splitlines() if "-----" not in line]
    secrets_ = [code, token, *token.split("."), ACCESS_KEY, *key_body]
    found = [s for s in secrets_ if s and s in blob]
    assert found == []
    # Raw bytes too, in case a member is not text.
    raw = out.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        names = tar.getnames()
    assert all(n.startswith("kiosk-support/") for n in names)
    # The command writes where it is told and prints the path.
    target = tmp_path / "cli.tar.gz"
    rc = await asyncio.to_thread(
        main, ["--config", str(config), "support-bundle", "-o", str(target)]
    )
    assert rc == 0 and target.exists()
    assert str(target) in capsys.readouterr().out
