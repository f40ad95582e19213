"""TOML tables to frozen dataclasses: each key's name and type checked, errors naming key and file.

Types come from the dataclass's annotations: numbers, booleans, strings, paths (relative to
the file), tuples, nested dataclasses, optional values and `Literal` choices, so a choice is
checked where the file is read and nowhere else.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from appliance.errors import SettingsError

T = TypeVar("T")


def read_toml(path: Path) -> dict[str, Any]:
    """The file's top-level table."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as exc:
        raise SettingsError(path, None, "file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(path, None, f"not valid TOML: {exc}") from exc


def required(raw: Mapping[str, Any], key: str, path: Path) -> Any:
    """`raw[key]`, or an error naming the missing section."""
    if key not in raw:
        raise SettingsError(path, key, "missing section")
    return raw[key]


def reject_unknown(raw: Mapping[str, Any], known: set[str], path: Path, prefix: str) -> None:
    """An error for the first key of `raw` not in `known`, listing the known ones."""
    for key in raw:
        if key not in known:
            raise SettingsError(
                path, f"{prefix}{key}", f"unknown key (known: {', '.join(sorted(known))})"
            )


def choices(hint: Any) -> tuple[str, ...]:
    """The values a `Literal` annotation allows, in their order."""
    assert typing.get_origin(hint) is Literal
    return typing.get_args(hint)


def build(cls: type[T], raw: Any, path: Path, section: str, base: Path) -> T:
    """Build dataclass `cls` from a TOML table, checking each key's name and type."""
    prefix = f"{section}." if section else ""
    if not isinstance(raw, Mapping):
        raise SettingsError(path, section or None, "must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    reject_unknown(raw, set(fields) - {"source"}, path, prefix)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, value in raw.items():
        values[name] = _convert(hints[name], value, path, f"{prefix}{name}", base)
    for name, f in fields.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in values and no_default:
            raise SettingsError(path, f"{prefix}{name}", "missing required key")
    return cls(**values)


def _convert(hint: Any, value: Any, path: Path, key: str, base: Path) -> Any:
    if typing.get_origin(hint) is Literal:
        allowed = choices(hint)
        if not isinstance(value, str):
            raise SettingsError(path, key, f"must be a string, not {value!r}")
        if value not in allowed:
            raise SettingsError(path, key, f"must be one of {allowed}")
        return value
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list):
            raise SettingsError(path, key, f"must be a list, not {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_convert(item, v, path, f"{key}[{i}]", base) for i, v in enumerate(value))
    if isinstance(hint, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(options[0], value, path, key, base)
    if dataclasses.is_dataclass(hint):
        return build(typing.cast(type, hint), value, path, key, base)
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise SettingsError(path, key, "must be a non-empty path string")
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SettingsError(path, key, f"must be a number, not {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(path, key, f"must be an integer, not {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise SettingsError(path, key, f"must be true or false, not {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise SettingsError(path, key, f"must be a string, not {value!r}")
        return value
    raise SettingsError(path, key, f"unsupported setting type {hint!r}")  # pragma: no cover
