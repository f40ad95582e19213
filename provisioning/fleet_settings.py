"""Per-device and per-group settings: what an admin may set, checked before it is stored.

A device gets the merge of its group's settings and its own (its own win, key by key,
one level deep) at each check-in; what neither sets stays as the device's own file
says. The agent is the backend's to use when it dispatches; the rest the device applies.

    agent_name       the agent dispatched into the device's calls
    call             max_duration_s, idle_timeout_s, cooldown_s (seconds)
    wake_word        enabled (true/false), model (a model name the device has)
    speaker_volume   0.0 to 1.0
    tools            the device tools an agent may call in a call (`DeviceTool`; the device
                     takes ["end_call"] when none is set)
    provider         where the calls go: {kind, ...options} (`providers/settings.py`); the
                     backend's alone, never sent to the device
    ring_operators   ring people before (or instead of) the agent: {enabled, timeout_s,
                     on_no_answer: "agent" | "end"} (`ringing.py`); the backend's, the device
                     learns it from each call's grant
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from appliance.vocabulary import DeviceTool, OnNoAnswer
from provisioning.errors import BadRequestError
from provisioning.providers.settings import check_provider

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# (minimum, maximum) of each number, in seconds or as a fraction.
_CALL_LIMITS = {
    "max_duration_s": (10.0, 7200.0),
    "idle_timeout_s": (0.0, 3600.0),
    "cooldown_s": (0.0, 600.0),
}
_VOLUME = (0.0, 1.0)
# How long a call may ring the operators: long enough to walk to a desk, short enough that
# nobody at the kiosk gives up first (the device's watchdog bounds `ringing` by the top).
RING_TIMEOUT_S = (5.0, 600.0)
MAX_GROUP_NAME = 64


def validate_settings(value: object) -> dict[str, Any]:
    """`value` as settings to store, or a `BadRequestError` naming the key that is wrong."""
    if not isinstance(value, Mapping):
        raise BadRequestError("settings must be a JSON object")
    settings: dict[str, Any] = {}
    for key, item in value.items():
        if key == "agent_name":
            settings[key] = _name(item, key)
        elif key == "call":
            settings[key] = _table(item, key, {k: _number_in(*r) for k, r in _CALL_LIMITS.items()})
        elif key == "wake_word":
            settings[key] = _table(
                item, key, {"enabled": _boolean, "model": lambda v, k: _name(v, k)}
            )
        elif key == "speaker_volume":
            settings[key] = _number_in(*_VOLUME)(item, key)
        elif key == "ring_operators":
            settings[key] = _table(
                item,
                key,
                {
                    "enabled": _boolean,
                    "timeout_s": _number_in(*RING_TIMEOUT_S),
                    "on_no_answer": _one_of(tuple(OnNoAnswer)),
                },
            )
        elif key == "provider":
            settings[key] = check_provider(item)
        elif key == "tools":
            settings[key] = _tools(item)
        else:
            raise BadRequestError(f"settings: unknown key {_shown(key)}")
    return settings


def _tools(value: object) -> list[str]:
    """The device tools an agent may call (`DeviceTool`): a list of distinct names."""
    names = [t.value for t in DeviceTool]
    if (
        not isinstance(value, list)
        or not all(isinstance(v, str) and v in names for v in value)
        or len(set(value)) != len(value)
    ):
        raise BadRequestError(f"settings: tools must be a list of distinct {', '.join(names)}")
    return list(value)


def validate_group_name(name: object) -> str:
    """A group name: letters, digits, `_.-`, at most 64 characters."""
    return _name(name, "group")


def merged(group_settings: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a device gets: its group's, overridden key by key by its own."""
    result: dict[str, Any] = {}
    for source in (group_settings, own):
        for key, value in source.items():
            if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
                result[key] = {**result[key], **value}
            else:
                result[key] = dict(value) if isinstance(value, Mapping) else value
    return result


def _table(value: object, name: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise BadRequestError(f"settings: {name} must be an object")
    table: dict[str, Any] = {}
    for key, item in value.items():
        check = fields.get(key)
        if check is None:
            raise BadRequestError(f"settings: unknown key {name}.{_shown(key)}")
        table[key] = check(item, f"{name}.{key}")
    return table


def _number_in(low: float, high: float) -> Any:
    def check(value: object, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRequestError(f"settings: {key} must be a number")
        if not low <= value <= high:
            raise BadRequestError(f"settings: {key} must be between {low:g} and {high:g}")
        return float(value)

    return check


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(value: object, key: str) -> str:
        if not isinstance(value, str) or value not in choices:
            raise BadRequestError(f"settings: {key} must be one of {', '.join(choices)}")
        return value

    return check


def _boolean(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequestError(f"settings: {key} must be true or false")
    return value


def _name(value: object, key: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise BadRequestError(f"settings: {key} must be 1-64 letters, digits, '_', '.' or '-'")
    return value


def _shown(key: object) -> str:
    text = str(key)
    return repr(text[:40]) if text.isprintable() else repr(text[:40].encode("unicode_escape"))
