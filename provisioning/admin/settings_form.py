"""The console's settings form, for a device or a group: fields to markup, and back.

An empty field is "not set": the group's settings or the device's own file apply. The
form owns only its own fields: a save lays them over the stored settings and keeps every
other key (`tools`, `provider`, ...), set through the API or the CLI. The core checks what
comes back (`fleet_settings.validate_settings`); this only shapes it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from provisioning.admin.html import Markup, html, join
from provisioning.errors import BadRequestError

# (form field, settings path, label, input attributes)
SETTINGS_FIELDS: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("agent_name", ("agent_name",), "Agent", "type=text maxlength=64"),
    ("call_max_duration_s", ("call", "max_duration_s"), "Max call (s)", "type=number step=any"),
    ("call_idle_timeout_s", ("call", "idle_timeout_s"), "Idle timeout (s)", "type=number step=any"),
    ("call_cooldown_s", ("call", "cooldown_s"), "Cooldown (s)", "type=number step=any"),
    ("wake_word_model", ("wake_word", "model"), "Wake word model", "type=text maxlength=64"),
    ("speaker_volume", ("speaker_volume",), "Volume (0-1)", "type=number step=0.05 min=0 max=1"),
    (
        "ring_timeout_s",
        ("ring_operators", "timeout_s"),
        "Ring people first for (s)",
        "type=number step=any min=5 max=600",
    ),
)
# (form field, settings path, label, ((value, shown, setting), ...)): "" is "not set".
SETTINGS_CHOICES: tuple[
    tuple[str, tuple[str, ...], str, tuple[tuple[str, str, object], ...]], ...
] = (
    (
        "wake_word_enabled",
        ("wake_word", "enabled"),
        "Wake word",
        (("on", "on", True), ("off", "off", False)),
    ),
    (
        "ring_enabled",
        ("ring_operators", "enabled"),
        "Ring people first",
        (("on", "on", True), ("off", "off", False)),
    ),
    (
        "ring_on_no_answer",
        ("ring_operators", "on_no_answer"),
        "If nobody answers",
        (("agent", "the agent takes the call", "agent"), ("end", "end the call", "end")),
    ),
)


def _setting(settings: Mapping[str, Any], path: tuple[str, ...]) -> object:
    value: object = settings
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def settings_fields(settings: Mapping[str, Any]) -> Markup:
    """The form's fields, filled with `settings`."""
    fields = [
        html(
            '<label>{} <input name="{}" {} value="{}"></label>',
            label,
            name,
            Markup(attrs),
            "" if (v := _setting(settings, path)) is None else v,
        )
        for name, path, label, attrs in SETTINGS_FIELDS
    ]
    selects = []
    for name, path, label, choices in SETTINGS_CHOICES:
        current = _setting(settings, path)
        chosen = next((value for value, _, setting in choices if setting == current), "")
        options = join(
            html(
                '<option value="{}"{}>{}</option>',
                value,
                Markup(" selected" if value == chosen else ""),
                shown,
            )
            for value, shown in (("", "(not set)"), *((v, s) for v, s, _ in choices))
        )
        selects.append(
            html('<label>{} <select name="{}">{}</select></label>', label, name, options)
        )
    return html("{}{}", join(fields), join(selects))


def _put(settings: dict[str, object], path: tuple[str, ...], value: object) -> None:
    target = settings
    for key in path[:-1]:
        nested = target.setdefault(key, {})
        assert isinstance(nested, dict)
        target = nested
    target[path[-1]] = value


def parse_settings(text: Callable[[str], str]) -> dict[str, object]:
    """The submitted form (`text(field)`) as a settings object; empty fields left out."""
    settings: dict[str, object] = {}
    for name, path, label, attrs in SETTINGS_FIELDS:
        value_text = text(name).strip()
        if not value_text:
            continue
        value: object = value_text
        if "type=number" in attrs:
            try:
                value = float(value_text)
            except ValueError as exc:
                raise BadRequestError(f"{label} must be a number") from exc
        _put(settings, path, value)
    for name, path, _, choices in SETTINGS_CHOICES:
        sent = text(name)
        for value, _, setting in choices:
            if sent == value:
                _put(settings, path, setting)
    return settings


def _owned_paths() -> Iterator[tuple[str, ...]]:
    yield from (field[1] for field in SETTINGS_FIELDS)
    yield from (choice[1] for choice in SETTINGS_CHOICES)


def _drop(settings: dict[str, object], path: tuple[str, ...]) -> None:
    """Remove the setting at `path`, and a table this leaves empty."""
    table = settings.get(path[0])
    if len(path) == 1:
        settings.pop(path[0], None)
    elif isinstance(table, dict):
        _drop(table, path[1:])
        if not table:
            del settings[path[0]]


def form_over(stored: Mapping[str, Any], text: Callable[[str], str]) -> dict[str, object]:
    """The submitted form laid over `stored`: the form's fields as sent (an empty one unset),
    every key the form does not show kept as it was."""
    parsed = parse_settings(text)
    settings: dict[str, object] = copy.deepcopy(dict(stored))
    for path in _owned_paths():
        _drop(settings, path)
        if (value := _setting(parsed, path)) is not None:
            _put(settings, path, value)
    return settings
