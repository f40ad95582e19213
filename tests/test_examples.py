"""The example settings in docs/examples load as they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.settings import load_settings
from provisioning.config import load_config

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def test_device_example_loads() -> None:
    settings = load_settings(EXAMPLES / "appliance.toml")
    assert settings.device.state_dir == Path("/var/lib/kiosk-voice")
    assert settings.board.name == "simulated"


def test_backend_example_loads(tmp_path: Path) -> None:
    secret = tmp_path / "livekit-api-secret"
    secret.write_text("s" * 40)
    secret.chmod(0o600)
    text = (EXAMPLES / "provisioning.toml").read_text()
    config_path = tmp_path / "provisioning.toml"
    config_path.write_text(text.replace("/etc/kiosk-voice/livekit-api-secret", str(secret)))
    config = load_config(config_path)
    assert config.calls.token_ttl_s == 600
    assert config.livekit.api_secret == "s" * 40
