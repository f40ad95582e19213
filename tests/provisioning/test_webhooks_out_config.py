"""The [webhooks] section: URL, secret file (owner-only), bounds; nothing secret in a repr."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from provisioning.config import load_config, redacted_url
from provisioning.errors import ConfigError

from .conftest import write_config

pytestmark = pytest.mark.unit

SECRET = "hook-secret-0123456789"


def with_webhooks(tmp_path: Path, lines: str, *, secret_mode: int = 0o600) -> Path:
    secret = tmp_path / "hook-secret"
    secret.write_text(SECRET + "\n", encoding="utf-8")
    secret.chmod(secret_mode)
    return write_config(tmp_path, "\n[webhooks]\n" + lines)


def test_a_webhooks_section_is_read_with_its_defaults(tmp_path: Path) -> None:
    url = "https://hooks.example.test/fleet/tok-123?key=abc"
    config = load_config(with_webhooks(tmp_path, f'url = "{url}"\nsecret_file = "hook-secret"'))
    hooks = config.webhooks
    assert hooks is not None
    assert (hooks.url, hooks.secret) == (url, SECRET)
    assert (hooks.timeout_s, hooks.max_attempts, hooks.max_age_s, hooks.max_backoff_s) == (
        10,
        100,
        86_400,
        600,
    )
    assert hooks.shown_url == "https://hooks.example.test/…"
    assert SECRET not in repr(config) and "tok-123" not in repr(config)


def test_no_section_means_no_webhooks(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path)).webhooks is None


def test_bounds_are_read(tmp_path: Path) -> None:
    lines = (
        'url = "http://127.0.0.1:9000/h"\nsecret_file = "hook-secret"\n'
        "timeout_s = 3\nmax_attempts = 7\nmax_age_s = 7200\nmax_backoff_s = 60"
    )
    hooks = load_config(with_webhooks(tmp_path, lines)).webhooks
    assert hooks is not None
    assert (hooks.timeout_s, hooks.max_attempts, hooks.max_age_s, hooks.max_backoff_s) == (
        3,
        7,
        7200,
        60,
    )


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('secret_file = "hook-secret"', "[webhooks] url is required"),
        ('url = "ftp://h/x"\nsecret_file = "hook-secret"', "[webhooks] url must be an http"),
        ('url = "http:///x"\nsecret_file = "hook-secret"', "[webhooks] url must be an http"),
        (
            'url = "http://h:99999/x"\nsecret_file = "hook-secret"',
            "[webhooks] url is not a valid URL",
        ),
        ('url = "http://h/x"', "[webhooks] secret_file is required"),
        ('url = "http://h/x"\nsecret_file = "nope"', "[webhooks] secret_file cannot be read"),
        ('url = "http://h/x"\nsecret_file = "hook-secret"\nsecret = "x"', "secret is not a known"),
        ('url = "http://h/x"\nsecret_file = "hook-secret"\ntimeout_s = 0', "timeout_s must be"),
        ('url = "http://h/x"\nsecret_file = "hook-secret"\nmax_age_s = 10', "max_age_s must be"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, lines: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"provisioning\.toml") as caught:
        load_config(with_webhooks(tmp_path, lines))
    assert message in caught.value.message


def test_a_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = with_webhooks(
        tmp_path, 'url = "http://h/x"\nsecret_file = "hook-secret"', secret_mode=0o640
    )
    with pytest.raises(ConfigError, match="readable by its owner only") as caught:
        load_config(path)
    assert SECRET not in caught.value.message


def test_a_url_password_needs_an_owner_only_config(tmp_path: Path) -> None:
    path = with_webhooks(tmp_path, 'url = "https://u:pw@h/x"\nsecret_file = "hook-secret"')
    # The LiveKit secret in a file of its own, so only the URL's password is at stake.
    (tmp_path / "lk").write_text("lk-secret", encoding="utf-8")
    (tmp_path / "lk").chmod(0o600)
    text = path.read_text(encoding="utf-8")
    path.write_text(re.sub(r'api_secret = ".*"', 'api_secret_file = "lk"', text), encoding="utf-8")
    assert load_config(path).webhooks is not None
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="holds a password") as caught:
        load_config(path)
    assert "pw" not in caught.value.message.replace("password", "")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@h.test:8443/a/b?c=d", "https://h.test:8443/…"),
        ("http://h.test", "http://h.test"),
        ("http://h.test/", "http://h.test"),
        ("http://[::1]:81/x", "http://[::1]:81/…"),
        ("http://h.test/?k=1", "http://h.test/…"),
    ],
)
def test_urls_are_shown_without_credentials(url: str, shown: str) -> None:
    assert redacted_url(url) == shown
