"""Backend settings: frozen dataclasses built once from a TOML file by `load_config`."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioning.errors import ConfigError

TOKEN_TTL_RANGE_S = (60, 3600)
CLOCK_SKEW_RANGE_S = (1, 600)


@dataclass(frozen=True)
class ServerConfig:
    """Where the HTTP API listens."""

    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True)
class DatabaseConfig:
    """The SQLite database file."""

    path: Path = Path("provisioning.sqlite3")


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
class Config:
    """All backend settings; `source` is the file they came from, if any."""

    livekit: LiveKitConfig
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    calls: CallsConfig = CallsConfig()
    auth: AuthConfig = AuthConfig()
    source: Path | None = None


class _Section:
    """Reads typed keys from one TOML table and reports errors naming key and file."""

    def __init__(self, file: Path, name: str, table: Any, allowed: set[str]) -> None:
        self.file = file
        self.name = name
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
    return config_from_mapping(data, file)


def config_from_mapping(data: Mapping[str, Any], file: Path) -> Config:
    """Validate parsed TOML; relative paths resolve against `file`'s directory."""
    sections = {"server", "database", "livekit", "calls", "auth"}
    unknown = sorted(set(data) - sections)
    if unknown:
        raise ConfigError(f"{file}: [{unknown[0]}] is not a known section")
    if "livekit" not in data:
        raise ConfigError(f"{file}: [livekit] section is required")
    base = file.parent

    server = _Section(file, "server", data.get("server", {}), {"host", "port"})
    database = _Section(file, "database", data.get("database", {}), {"path"})
    livekit = _Section(
        file, "livekit", data["livekit"], {"url", "api_key", "api_secret", "api_secret_file"}
    )
    calls = _Section(
        file, "calls", data.get("calls", {}), {"agent_name", "token_ttl_s", "max_per_minute"}
    )
    auth = _Section(file, "auth", data.get("auth", {}), {"max_clock_skew_s"})

    url = livekit.string("url")
    if not url.startswith(("ws://", "wss://")):
        raise livekit.error("url", "must start with ws:// or wss://")

    return Config(
        server=ServerConfig(
            host=server.string("host", ServerConfig.host),
            port=server.integer("port", ServerConfig.port, 0, 65535),
        ),
        database=DatabaseConfig(path=base / database.string("path", str(DatabaseConfig.path))),
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
        source=file,
    )


def _api_secret(livekit: _Section, base: Path) -> str:
    if livekit.has("api_secret") and livekit.has("api_secret_file"):
        raise livekit.error("api_secret_file", "cannot be combined with api_secret")
    if livekit.has("api_secret"):
        return livekit.string("api_secret")
    if not livekit.has("api_secret_file"):
        raise livekit.error("api_secret", "is required (or api_secret_file)")
    secret_path = base / livekit.string("api_secret_file")
    try:
        if secret_path.stat().st_mode & 0o077:
            raise livekit.error(
                "api_secret_file", f"{secret_path} must be readable by its owner only (0600)"
            )
        secret = secret_path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise livekit.error("api_secret_file", f"cannot be read: {secret_path}") from exc
    if not secret:
        raise livekit.error("api_secret_file", f"is empty: {secret_path}")
    return secret
