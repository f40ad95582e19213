"""Backend settings: frozen dataclasses built once from a TOML file by `load_config`."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from provisioning.errors import ConfigError

TOKEN_TTL_RANGE_S = (60, 3600)
CLOCK_SKEW_RANGE_S = (1, 600)


@dataclass(frozen=True)
class ServerConfig:
    """Where the HTTP API listens, and how much a client may take of it."""

    host: str = "127.0.0.1"
    port: int = 8080
    # Connections beyond this are answered 503 and closed (keep below LimitNOFILE).
    max_connections: int = 1000
    # A request's headers, and then its body, must arrive within these.
    header_timeout_s: int = 10
    body_timeout_s: int = 10
    # How people reach the backend (the operator page of a ringing call's join link);
    # None: http://host:port.
    public_url: str | None = None

    @property
    def page_url(self) -> str:
        """The origin the operator page is linked from."""
        return self.public_url or f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class DatabaseConfig:
    """SQLite (`path`, the embedded default) or PostgreSQL (`url`, password from a file)."""

    path: Path = Path("provisioning.sqlite3")
    url: str | None = None
    password: str | None = field(default=None, repr=False)
    pool_size: int = 10
    # A statement, or the wait for a connection or a lock, is bounded by this.
    timeout_s: int = 5

    @property
    def location(self) -> str:
        """Where the data is, for messages: the file, or the URL (it never holds a password)."""
        return str(self.path) if self.url is None else self.url


@dataclass(frozen=True)
class LiveKitConfig:
    """The LiveKit server handed to devices and the key pair tokens are signed with."""

    url: str
    api_key: str
    api_secret: str = field(repr=False)


@dataclass(frozen=True)
class CallsConfig:
    """How calls are set up: the dispatched agent, token lifetime and per-device rate."""

    agent_name: str = "demo-agent"
    token_ttl_s: int = 600
    max_per_minute: int = 10


@dataclass(frozen=True)
class AuthConfig:
    """Request-signature checks."""

    max_clock_skew_s: int = 60


@dataclass(frozen=True)
class FleetConfig:
    """The fleet view: when a device that stopped checking in counts as offline."""

    # Three missed heartbeats (a device checks in every 60 s).
    offline_after_s: int = 180


@dataclass(frozen=True)
class WebhooksConfig:
    """Fleet events out: where they are POSTed, the signing secret, and how hard to try."""

    # May carry credentials (user:password@, a token in the path or query): see `shown_url`.
    url: str = field(repr=False)
    secret: str = field(repr=False)
    # Each attempt (connect, send, answer) is bounded by this.
    timeout_s: int = 10
    # An event is given up after this many failed attempts, or this long after it happened.
    max_attempts: int = 100
    max_age_s: int = 86_400
    # The wait between attempts doubles up to this (with jitter).
    max_backoff_s: int = 600

    @property
    def shown_url(self) -> str:
        """The URL for logs and messages: scheme, host and port only."""
        return redacted_url(self.url)


def _public_url(server: _Section) -> str | None:
    if not server.has("public_url"):
        return None
    url = server.string("public_url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise server.error("public_url", "must be an http:// or https:// URL with a host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise server.error("public_url", "must be an origin (and path), with no credentials")
    return url.rstrip("/")


def redacted_url(url: str) -> str:
    """`scheme://host[:port]`, then `/…` if the URL had a path or query: no credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    tail = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{tail}"


# The hosted platforms a fleet may call through (docs/platforms.md), and where their APIs
# are by default: seeds 000 line 23, 001 line 26, 002 line 15, 004 line 37. Click2Call's
# document names no host ("BASE", seed 003 line 20): its base_url is required.
PLATFORM_BASE_URLS: Mapping[str, str | None] = {
    "call2me": "https://api.call2me.app",
    "vatel": "https://api.vatel.ai",
    "thinnestai": "https://api.thinnest.ai",
    "click2call": None,
    "hmsvoicedock": "https://assistant-api.hmsovereign.com",
}
# A platform's answer must come before the device's own request times out (its
# backend.timeout_s, 5 s by default, bounds each phase of the request to us).
PLATFORM_TIMEOUT_S = 4


@dataclass(frozen=True)
class PlatformConfig:
    """One hosted platform's API: where it is, the fleet's key for it, how long to wait."""

    name: str
    base_url: str
    api_key: str = field(repr=False)
    timeout_s: int = PLATFORM_TIMEOUT_S
    # Vatel only: its HTTP request is not in its document (an assumption; docs/platforms.md).
    session_path: str = "/v1/agents/{agent_id}/session-token"


@dataclass(frozen=True)
class Config:
    """All backend settings; `source` is the file they came from, if any."""

    livekit: LiveKitConfig
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    calls: CallsConfig = CallsConfig()
    auth: AuthConfig = AuthConfig()
    fleet: FleetConfig = FleetConfig()
    # None: no webhook receiver, fleet events are dropped.
    webhooks: WebhooksConfig | None = None
    # The hosted platforms configured, by name (`[platforms.NAME]`).
    platforms: Mapping[str, PlatformConfig] = field(default_factory=dict)
    source: Path | None = None


class _Section:
    """Reads typed keys from one TOML table and reports errors naming key and file."""

    def __init__(
        self, file: Path, name: str, table: Any, allowed: set[str], file_mode: int = 0o600
    ) -> None:
        self.file = file
        self.name = name
        self.file_mode = file_mode
        if not isinstance(table, Mapping):
            raise self.error(None, "must be a table")
        self.table: Mapping[str, Any] = table
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise self.error(unknown[0], "is not a known key")

    def error(self, key: str | None, problem: str) -> ConfigError:
        where = f"[{self.name}]" if key is None else f"[{self.name}] {key}"
        return ConfigError(f"{self.file}: {where} {problem}")

    def has(self, key: str) -> bool:
        return key in self.table

    def string(self, key: str, default: str | None = None) -> str:
        if key not in self.table:
            if default is None:
                raise self.error(key, "is required")
            return default
        value = self.table[key]
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, "must be a non-empty string")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {value!r}")
        if not low <= value <= high:
            raise self.error(key, f"must be between {low} and {high}, got {value}")
        return value


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file; raise `ConfigError` naming key and file."""
    file = Path(path)
    try:
        with file.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"{file}: config file not found") from exc
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config file: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
    return config_from_mapping(data, file, file_mode=file.stat().st_mode & 0o777)


def config_from_mapping(data: Mapping[str, Any], file: Path, *, file_mode: int = 0o600) -> Config:
    """Validate parsed TOML; relative paths resolve against `file`'s directory.

    `file_mode` is the config file's permission bits: a secret written inline is
    refused when others can read the file.
    """
    sections = {"server", "database", "livekit", "calls", "auth", "fleet", "webhooks", "platforms"}
    unknown = sorted(set(data) - sections)
    if unknown:
        raise ConfigError(f"{file}: [{unknown[0]}] is not a known section")
    if "livekit" not in data:
        raise ConfigError(f"{file}: [livekit] section is required")
    base = file.parent

    server = _Section(
        file,
        "server",
        data.get("server", {}),
        {"host", "port", "max_connections", "header_timeout_s", "body_timeout_s", "public_url"},
    )
    database = _Section(
        file,
        "database",
        data.get("database", {}),
        {"path", "url", "password_file", "pool_size", "timeout_s"},
    )
    livekit = _Section(
        file,
        "livekit",
        data["livekit"],
        {"url", "api_key", "api_secret", "api_secret_file"},
        file_mode,
    )
    calls = _Section(
        file, "calls", data.get("calls", {}), {"agent_name", "token_ttl_s", "max_per_minute"}
    )
    auth = _Section(file, "auth", data.get("auth", {}), {"max_clock_skew_s"})
    fleet = _Section(file, "fleet", data.get("fleet", {}), {"offline_after_s"})

    url = livekit.string("url")
    if not url.startswith(("ws://", "wss://")):
        raise livekit.error("url", "must start with ws:// or wss://")

    return Config(
        server=ServerConfig(
            host=server.string("host", ServerConfig.host),
            port=server.integer("port", ServerConfig.port, 0, 65535),
            max_connections=server.integer(
                "max_connections", ServerConfig.max_connections, 1, 100_000
            ),
            header_timeout_s=server.integer(
                "header_timeout_s", ServerConfig.header_timeout_s, 1, 300
            ),
            body_timeout_s=server.integer("body_timeout_s", ServerConfig.body_timeout_s, 1, 300),
            public_url=_public_url(server),
        ),
        database=_database(database, base),
        livekit=LiveKitConfig(
            url=url, api_key=livekit.string("api_key"), api_secret=_api_secret(livekit, base)
        ),
        calls=CallsConfig(
            agent_name=calls.string("agent_name", CallsConfig.agent_name),
            token_ttl_s=calls.integer("token_ttl_s", CallsConfig.token_ttl_s, *TOKEN_TTL_RANGE_S),
            max_per_minute=calls.integer("max_per_minute", CallsConfig.max_per_minute, 1, 1000),
        ),
        auth=AuthConfig(
            max_clock_skew_s=auth.integer(
                "max_clock_skew_s", AuthConfig.max_clock_skew_s, *CLOCK_SKEW_RANGE_S
            ),
        ),
        fleet=FleetConfig(
            offline_after_s=fleet.integer(
                "offline_after_s", FleetConfig.offline_after_s, 60, 86_400
            )
        ),
        webhooks=_webhooks(data["webhooks"], file, base, file_mode) if "webhooks" in data else None,
        platforms=_platforms(data.get("platforms", {}), file, base),
        source=file,
    )


def _database(database: _Section, base: Path) -> DatabaseConfig:
    pool_size = database.integer("pool_size", DatabaseConfig.pool_size, 1, 100)
    timeout_s = database.integer("timeout_s", DatabaseConfig.timeout_s, 1, 60)
    if not database.has("url"):
        if database.has("password_file"):
            raise database.error("password_file", "needs url (PostgreSQL)")
        path = base / database.string("path", str(DatabaseConfig.path))
        return DatabaseConfig(path=path, pool_size=pool_size, timeout_s=timeout_s)
    if database.has("path"):
        raise database.error("url", "cannot be combined with path")
    url = database.string("url")
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise database.error("url", "must be postgresql://[user@]host[:port]/dbname")
    if parts.password is not None:
        raise database.error("url", "must not contain a password: put it in password_file")
    password = None
    if database.has("password_file"):
        password = _secret_file(database, "password_file", base)
    return DatabaseConfig(url=url, password=password, pool_size=pool_size, timeout_s=timeout_s)


def _webhooks(table: Any, file: Path, base: Path, file_mode: int) -> WebhooksConfig:
    section = _Section(
        file,
        "webhooks",
        table,
        {"url", "secret_file", "timeout_s", "max_attempts", "max_age_s", "max_backoff_s"},
        file_mode,
    )
    url = section.string("url")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise section.error("url", "is not a valid URL") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise section.error("url", "must be an http:// or https:// URL with a host")
    if parts.password is not None and file_mode & 0o077:
        raise section.error(
            "url",
            f"holds a password in a file others can read (mode {file_mode:04o}): "
            "make the config readable by its owner only (0600)",
        )
    if not section.has("secret_file"):
        raise section.error("secret_file", "is required (the key webhooks are signed with)")
    return WebhooksConfig(
        url=url,
        secret=_secret_file(section, "secret_file", base),
        timeout_s=section.integer("timeout_s", WebhooksConfig.timeout_s, 1, 60),
        max_attempts=section.integer("max_attempts", WebhooksConfig.max_attempts, 1, 10_000),
        max_age_s=section.integer("max_age_s", WebhooksConfig.max_age_s, 60, 30 * 86_400),
        max_backoff_s=section.integer("max_backoff_s", WebhooksConfig.max_backoff_s, 1, 3600),
    )


def _platforms(table: Any, file: Path, base: Path) -> dict[str, PlatformConfig]:
    """`[platforms.NAME]`: api_key_file (0600, required), base_url, timeout_s.

    The key is only ever in a file: an inline `api_key` is not a known key.
    """
    if not isinstance(table, Mapping):
        raise ConfigError(f"{file}: [platforms] must be a table")
    platforms = {}
    for name, sub in table.items():
        if name not in PLATFORM_BASE_URLS:
            raise ConfigError(
                f"{file}: [platforms.{name}] is not a known platform "
                f"({', '.join(PLATFORM_BASE_URLS)})"
            )
        keys = {"api_key_file", "base_url", "timeout_s"}
        if name == "vatel":
            keys.add("session_path")
        section = _Section(file, f"platforms.{name}", sub, keys)
        default_url = PLATFORM_BASE_URLS[name]
        base_url = section.string("base_url", default_url)
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise section.error("base_url", "must be an http:// or https:// URL with a host")
        if parts.password is not None or parts.username is not None:
            raise section.error("base_url", "must not hold credentials: use api_key_file")
        if not section.has("api_key_file"):
            raise section.error("api_key_file", "is required (the fleet's API key, in a 0600 file)")
        session_path = PlatformConfig.session_path
        if name == "vatel":
            session_path = section.string("session_path", session_path)
            if not session_path.startswith("/"):
                raise section.error("session_path", "must start with /")
        platforms[name] = PlatformConfig(
            name=name,
            base_url=base_url,
            api_key=_secret_file(section, "api_key_file", base),
            timeout_s=section.integer("timeout_s", PLATFORM_TIMEOUT_S, 1, 30),
            session_path=session_path,
        )
    return platforms


def _api_secret(livekit: _Section, base: Path) -> str:
    if livekit.has("api_secret") and livekit.has("api_secret_file"):
        raise livekit.error("api_secret_file", "cannot be combined with api_secret")
    if livekit.has("api_secret"):
        if livekit.file_mode & 0o077:
            raise livekit.error(
                "api_secret",
                f"is in a file others can read (mode {livekit.file_mode:04o}): "
                "use api_secret_file, or make the config readable by its owner only (0600)",
            )
        return livekit.string("api_secret")
    if not livekit.has("api_secret_file"):
        raise livekit.error("api_secret", "is required (or api_secret_file)")
    return _secret_file(livekit, "api_secret_file", base)


def _secret_file(section: _Section, key: str, base: Path) -> str:
    """The trimmed contents of a secret file that only its owner can read."""
    secret_path = base / section.string(key)
    try:
        if secret_path.stat().st_mode & 0o077:
            raise section.error(key, f"{secret_path} must be readable by its owner only (0600)")
        secret = secret_path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise section.error(key, f"cannot be read: {secret_path}") from exc
    if not secret:
        raise section.error(key, f"is empty: {secret_path}")
    return secret
