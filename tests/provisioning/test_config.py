"""Loading the backend's TOML config: defaults, validation, and errors naming key and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioning.config import load_config
from provisioning.errors import ConfigError

from .conftest import API_SECRET, write_config

pytestmark = pytest.mark.unit

MINIMAL = """
[livekit]
url = "wss://lk.example.org"
api_key = "key"
api_secret = "s3cret-value"
"""


def write(tmp_path: Path, text: str, name: str = "backend.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config.database.path == tmp_path / "provisioning.sqlite3"
    assert (config.calls.agent_name, config.calls.token_ttl_s) == ("demo-agent", 600)
    assert config.auth.max_clock_skew_s == 60
    assert config.livekit.url == "wss://lk.example.org"
    assert config.livekit.api_secret == "s3cret-value"
    assert config.source == tmp_path / "backend.toml"


def test_full_config_is_read(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, max_per_minute=7))
    assert config.server.port == 0
    assert config.database.path == tmp_path / "state" / "db.sqlite3"
    assert config.calls.agent_name == "test-agent"
    assert config.calls.token_ttl_s == 900
    assert config.calls.max_per_minute == 7
    assert config.auth.max_clock_skew_s == 30


def test_secret_never_in_repr(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    assert API_SECRET not in repr(config)
    assert API_SECRET not in str(config.livekit)
    assert "test-key" in repr(config.livekit)


def test_secret_from_file_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "lk").write_text("from-a-file\n", encoding="utf-8")
    (tmp_path / "secrets" / "lk").chmod(0o600)
    text = MINIMAL.replace('api_secret = "s3cret-value"', 'api_secret_file = "secrets/lk"')
    config = load_config(write(tmp_path, text))
    assert config.livekit.api_secret == "from-a-file"


def test_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    (tmp_path / "lk").write_text("from-a-file\n", encoding="utf-8")
    (tmp_path / "lk").chmod(0o644)
    text = MINIMAL.replace('api_secret = "s3cret-value"', 'api_secret_file = "lk"')
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert "api_secret_file" in str(error.value) and "0600" in str(error.value)
    assert "from-a-file" not in str(error.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (MINIMAL + "\n[calls]\ntoken_ttl = 600\n", "[calls] token_ttl is not a known key"),
        (MINIMAL + "\n[calls]\ntoken_ttl_s = 59\n", "[calls] token_ttl_s must be between 60"),
        (MINIMAL + "\n[calls]\ntoken_ttl_s = 3601\n", "[calls] token_ttl_s must be between 60"),
        (MINIMAL + '\n[calls]\ntoken_ttl_s = "600"\n', "[calls] token_ttl_s must be an integer"),
        (MINIMAL + "\n[calls]\ntoken_ttl_s = true\n", "[calls] token_ttl_s must be an integer"),
        (MINIMAL + '\n[calls]\nagent_name = ""\n', "[calls] agent_name must be a non-empty"),
        (MINIMAL + "\n[server]\nport = 70000\n", "[server] port must be between 0 and 65535"),
        (MINIMAL + "\n[auth]\nmax_clock_skew_s = 0\n", "[auth] max_clock_skew_s must be between"),
        (MINIMAL + "\n[database]\npath = 3\n", "[database] path must be a non-empty string"),
        (MINIMAL + "\n[extras]\nx = 1\n", "[extras] is not a known section"),
        (
            MINIMAL + '\n[database]\nurl = "postgresql://kiosk:pw@db/fleet"\n',
            "[database] url must not contain a password",
        ),
        (
            MINIMAL + '\n[database]\nurl = "mysql://db/fleet"\n',
            "[database] url must be postgresql://",
        ),
        (
            MINIMAL + '\n[database]\nurl = "postgresql://db/f"\npath = "x.db"\n',
            "[database] url cannot be combined with path",
        ),
        (MINIMAL + '\n[database]\npassword_file = "pw"\n', "[database] password_file needs url"),
        (MINIMAL + "\n[server]\nmax_connections = 0\n", "[server] max_connections must be"),
        (MINIMAL + "\n[server]\nheader_timeout_s = 0\n", "[server] header_timeout_s must be"),
        ("server = 1\n" + MINIMAL, "[server] must be a table"),
        (MINIMAL.replace("wss://", "https://"), "[livekit] url must start with ws:// or wss://"),
        (MINIMAL.replace('api_key = "key"\n', ""), "[livekit] api_key is required"),
        (MINIMAL.replace('api_secret = "s3cret-value"\n', ""), "[livekit] api_secret is required"),
        (MINIMAL + 'api_secret_file = "x"\n', "[livekit] api_secret_file cannot be combined"),
        ("[server]\nport = 1\n", "[livekit] section is required"),
        ("[livekit\n", "not valid TOML"),
    ],
)
def test_errors_name_key_and_file(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text, name="kiosk-backend.toml")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert needle in message
    assert str(path) in message
    assert "s3cret-value" not in message


def test_edges_of_token_ttl_are_accepted(tmp_path: Path) -> None:
    for ttl in (60, 3600):
        config = load_config(write(tmp_path, MINIMAL + f"\n[calls]\ntoken_ttl_s = {ttl}\n"))
        assert config.calls.token_ttl_s == ttl


def test_missing_secret_file_is_named(tmp_path: Path) -> None:
    text = MINIMAL.replace('api_secret = "s3cret-value"', 'api_secret_file = "nope"')
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=r"\[livekit\] api_secret_file cannot be read") as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.toml")


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_inline_secret_in_a_config_others_can_read_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match=r"\[livekit\] api_secret is in a file others can read"):
        load_config(path)
    # The same file is fine once only its owner can read it, or with the secret in a file.
    path.chmod(0o600)
    assert load_config(path).livekit.api_secret == "s3cret-value"
    (tmp_path / "lk").write_text("from-file\n")
    (tmp_path / "lk").chmod(0o600)
    path.write_text(MINIMAL.replace('api_secret = "s3cret-value"', 'api_secret_file = "lk"'))
    path.chmod(0o644)
    assert load_config(path).livekit.api_secret == "from-file"


def test_postgresql_url_and_password_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("db-pass\n")
    (tmp_path / "pw").chmod(0o600)
    text = (
        MINIMAL + '\n[database]\nurl = "postgresql://kiosk@db:5433/fleet"\npassword_file = "pw"\n'
    )
    config = load_config(write(tmp_path, text))
    assert config.database.url == "postgresql://kiosk@db:5433/fleet"
    assert config.database.password == "db-pass"
    assert "db-pass" not in repr(config)
    (tmp_path / "pw").chmod(0o644)
    with pytest.raises(ConfigError, match=r"\[database\] password_file .* owner only"):
        load_config(write(tmp_path, text))
