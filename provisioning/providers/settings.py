"""A device's call provider, from fleet settings: `provider = {kind, ...options}`.

Checked when an admin stores it (`check_provider`: known keys, right types) and again when a
call is made from the merge of the group's and the device's tables (`resolve`: the options
the kind needs). A device table that names another `kind` than its group's replaces the
group's; one without `kind` overrides the group's key by key.

    kind               livekit (default), call2me, vatel, thinnestai, click2call, hmsvoicedock
    agent_id           call2me, vatel, thinnestai, click2call
    site               any platform: a label passed on as correlation metadata
    metadata           call2me (its `metadata`), hmsvoicedock (`assistant_override.metadata`)
    context, recording, max_duration                       thinnestai
    case_id, customer_number (10 digits), customer_crm_id, did   click2call
    assistant_id, assistant_override, assistant            hmsvoicedock (reference, hybrid,
                                                           transient mode)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from provisioning.errors import BadRequestError
from provisioning.providers.base import ProviderKind
from provisioning.providers.errors import ProviderMisconfiguredError

MAX_TEXT = 128
MAX_OBJECT_JSON = 4096
_UUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_TEN_DIGITS = re.compile(r"^[0-9]{10}$")

_KEYS: Mapping[ProviderKind, frozenset[str]] = {
    ProviderKind.LIVEKIT: frozenset({"kind"}),
    ProviderKind.CALL2ME: frozenset({"kind", "agent_id", "site", "metadata"}),
    ProviderKind.VATEL: frozenset({"kind", "agent_id", "site"}),
    ProviderKind.THINNESTAI: frozenset(
        {"kind", "agent_id", "site", "context", "recording", "max_duration"}
    ),
    ProviderKind.CLICK2CALL: frozenset(
        {"kind", "agent_id", "site", "case_id", "customer_number", "customer_crm_id", "did"}
    ),
    ProviderKind.HMSVOICEDOCK: frozenset(
        {"kind", "site", "assistant_id", "assistant_override", "assistant", "metadata"}
    ),
}
_REQUIRED: Mapping[ProviderKind, tuple[str, ...]] = {
    ProviderKind.CALL2ME: ("agent_id",),
    ProviderKind.VATEL: ("agent_id",),
    ProviderKind.THINNESTAI: ("agent_id",),
    # seed 003 line 20: the four fields of the /click2call example; `did` is optional (l. 28).
    ProviderKind.CLICK2CALL: ("case_id", "customer_number", "agent_id", "customer_crm_id"),
}
_TEXT = {"agent_id", "site", "case_id", "customer_crm_id", "did"}
_OBJECTS = {"metadata", "context", "assistant_override", "assistant"}


@dataclass(frozen=True)
class ProviderChoice:
    """The provider of one device's calls and its options (without `kind`)."""

    kind: ProviderKind = ProviderKind.LIVEKIT
    options: Mapping[str, Any] = field(default_factory=dict)


def check_provider(value: object) -> dict[str, Any]:
    """`value` as a provider table to store, or a `BadRequestError` naming the key."""
    if not isinstance(value, Mapping):
        raise BadRequestError("settings: provider must be an object")
    table: dict[str, Any] = {}
    kind = None
    if "kind" in value:
        kind = _kind(value["kind"], BadRequestError)
        table["kind"] = kind.value
    allowed = _KEYS[kind] if kind is not None else frozenset().union(*_KEYS.values())
    for key, item in value.items():
        if key == "kind":
            continue
        if key not in allowed:
            raise BadRequestError(f"settings: unknown key provider.{str(key)[:40]!r}")
        table[key] = _checked(key, item, BadRequestError)
    return table


def resolve(group: Mapping[str, Any], own: Mapping[str, Any]) -> ProviderChoice:
    """The provider a device's call uses: its table over its group's, checked as a whole.

    `ProviderMisconfiguredError` if the merge cannot make a call (a required option missing,
    options of another kind, HMS modes combined as its API refuses them).
    """
    group_table = group.get("provider")
    own_table = own.get("provider")
    table: dict[str, Any] = dict(group_table) if isinstance(group_table, Mapping) else {}
    if isinstance(own_table, Mapping):
        if "kind" in own_table and own_table["kind"] != table.get("kind"):
            table = {}
        table.update(own_table)
    kind = _kind(table.get("kind", ProviderKind.LIVEKIT.value), ProviderMisconfiguredError)
    options = {}
    for key, item in table.items():
        if key == "kind":
            continue
        if key not in _KEYS[kind]:
            raise ProviderMisconfiguredError(f"provider.{key} does not apply to {kind.value}")
        options[key] = _checked(key, item, ProviderMisconfiguredError)
    missing = [key for key in _REQUIRED.get(kind, ()) if key not in options]
    if missing:
        raise ProviderMisconfiguredError(f"provider.{missing[0]} is required for {kind.value}")
    if kind is ProviderKind.HMSVOICEDOCK:
        _check_hms_mode(options)
    return ProviderChoice(kind, options)


def _check_hms_mode(options: Mapping[str, Any]) -> None:
    """HMS's three modes, refused locally as its API would (seed 004 lines 159-162)."""
    if "assistant_id" not in options and "assistant" not in options:
        raise ProviderMisconfiguredError("hmsvoicedock needs provider.assistant_id or assistant")
    if "assistant_override" in options and "assistant_id" not in options:
        raise ProviderMisconfiguredError("provider.assistant_override requires assistant_id")
    if "assistant" in options and "assistant_override" in options:
        raise ProviderMisconfiguredError("provider.assistant cannot be combined with an override")
    if "assistant" in options:
        lacking = [
            k for k in ("stt_config", "llm_config", "tts_config") if k not in options["assistant"]
        ]
        if lacking:
            raise ProviderMisconfiguredError(f"provider.assistant needs {lacking[0]} (transient)")


def _kind(value: object, error: type[Exception]) -> ProviderKind:
    try:
        if isinstance(value, str):
            return ProviderKind(value)
    except ValueError:
        pass
    choices = ", ".join(k.value for k in ProviderKind)
    raise error(f"settings: provider.kind must be one of {choices}")


def _checked(key: str, value: object, error: type[Exception]) -> Any:
    where = f"settings: provider.{key}"
    if key in _TEXT:
        if not isinstance(value, str) or not 1 <= len(value) <= MAX_TEXT or not value.isprintable():
            raise error(f"{where} must be 1-{MAX_TEXT} printable characters")
        return value
    if key == "assistant_id":
        if not isinstance(value, str) or not _UUID.match(value):
            raise error(f"{where} must be a UUID")  # seed 004 line 50
        return value
    if key == "customer_number":
        if not isinstance(value, str) or not _TEN_DIGITS.match(value):
            raise error(f"{where} must be exactly 10 digits")  # seed 003 line 19
        return value
    if key == "recording":
        if not isinstance(value, bool):
            raise error(f"{where} must be true or false")
        return value
    if key == "max_duration":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 86_400:
            raise error(f"{where} must be a whole number of seconds, 1 to 86400")
        return value
    if key in _OBJECTS:
        if not isinstance(value, Mapping):
            raise error(f"{where} must be an object")
        if len(json.dumps(value)) > MAX_OBJECT_JSON:
            raise error(f"{where} must be at most {MAX_OBJECT_JSON} characters of JSON")
        return dict(value)
    raise error(f"{where} is not a known key")
