"""The console's pages as markup: pure functions of what the core returned (no I/O here).

`csrf` is the session's token for the forms, or None for a read-only token: then no
write form is rendered at all (the server refuses them anyway).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

from appliance.vocabulary import EndReason
from provisioning.admin.html import Markup, duration, html, join, table, when
from provisioning.admin.settings_form import settings_fields
from provisioning.models import AdminAction, CallRecord, Device, DeviceStatus, EnrollmentCode
from provisioning.webhooks_out import Delivery, DeliveryState

CODE_TTLS = ((3600, "1 hour"), (86400, "1 day"), (7 * 86400, "7 days"), (30 * 86400, "30 days"))


def notice(text: str | None, *, error: bool = False) -> Markup:
    """A message box, or nothing."""
    if not text:
        return Markup("")
    return html('<p class="{}" role="status">{}</p>', "error" if error else "notice", text)


def button_form(action: str, csrf: str, label: str, *, danger: bool = False) -> Markup:
    """A one-button POST form carrying the session's CSRF token."""
    return html(
        '<form method=post action="{}"><input type=hidden name=csrf value="{}">'
        '<button type=submit class="{}">{}</button></form>',
        action,
        csrf,
        "danger" if danger else "",
        label,
    )


def status_badge(device: Device, offline: bool) -> Markup:
    """The device's status, and `offline` when it missed its check-ins."""
    badge = html('<span class="badge {}">{}</span>', device.status.value, device.status.value)
    if offline:
        badge = html('{} <span class="badge offline">offline</span>', badge)
    return badge


def _device_link(device: Device) -> Markup:
    return html(
        '<a href="/console/devices/{}">{}</a>', device.device_id, device.name or "(no name)"
    )


def _device_actions(device: Device, csrf: str | None) -> Markup:
    if csrf is None:
        return Markup("")
    base = f"/console/devices/{device.device_id}"
    forms = []
    if device.status is DeviceStatus.PENDING:
        forms.append(button_form(f"{base}/approve", csrf, "Approve"))
        forms.append(button_form(f"{base}/reject", csrf, "Reject", danger=True))
    if device.status is not DeviceStatus.REVOKED:
        forms.append(button_form(f"{base}/revoke", csrf, "Revoke", danger=True))
    return join(forms)


def devices_page(
    devices: Sequence[Device], offline: set[str], csrf: str | None, message: str | None
) -> Markup:
    """Pending approvals first, then every device."""
    pending = [d for d in devices if d.status is DeviceStatus.PENDING]
    pending_table = table(
        ("Name", "Device", "Enrolled", "Last seen", "Actions"),
        (
            (
                _device_link(d),
                d.device_id,
                when(d.created_at),
                when(d.last_seen),
                _device_actions(d, csrf),
            )
            for d in pending
        ),
        empty="No device is waiting for approval.",
    )
    all_table = table(
        ("Name", "Device", "Status", "State", "Last seen", "Firmware", "Group", "Actions"),
        (
            (
                _device_link(d),
                d.device_id,
                status_badge(d, d.device_id in offline),
                d.state or "-",
                when(d.last_seen),
                d.firmware or "-",
                d.group or "-",
                _device_actions(d, csrf),
            )
            for d in devices
        ),
        empty="No device has enrolled yet.",
    )
    return html(
        "{}<section id=pending><h2>Pending approval ({})</h2>{}</section>"
        "<section id=devices><h2>All devices ({})</h2>{}</section>",
        notice(message),
        len(pending),
        pending_table,
        len(devices),
        all_table,
    )


def device_page(
    device: Device,
    *,
    offline: bool,
    effective: Mapping[str, Any],
    csrf: str | None,
    message: str | None,
    error: str | None,
) -> Markup:
    """One device: what it reported, its settings, and (read-write) the forms to change them."""
    facts = (
        ("Device", device.device_id),
        ("Name", device.name or "(no name)"),
        ("Status", status_badge(device, offline)),
        ("State", device.state or "-"),
        ("Last seen", when(device.last_seen)),
        ("Last fault", device.last_error or "-"),
        ("Firmware", device.firmware or "-"),
        ("Board", device.board or "-"),
        (
            "Clock offset",
            "-" if device.clock_offset_s is None else f"{device.clock_offset_s:+.1f} s",
        ),
        ("Group", device.group or "-"),
        ("Enrolled", when(device.created_at)),
        ("Flag", device.flag_reason.value if device.flag_reason else "-"),
        ("Own settings", json.dumps(dict(device.settings), sort_keys=True)),
        ("Effective settings", json.dumps(dict(effective), sort_keys=True)),
    )
    body = [
        notice(message),
        notice(error, error=True),
        table(("Field", "Value"), facts, empty=""),
    ]
    if csrf is not None:
        body.append(html("<h2>Actions</h2><p>{}</p>", _device_actions(device, csrf)))
        body.append(_settings_form(device, csrf))
        body.append(
            html(
                '<h2>Group</h2><form method=post action="/console/devices/{}/group" class=stack>'
                '<input type=hidden name=csrf value="{}">'
                '<label>Group (empty: none) <input name=group value="{}" maxlength=64></label>'
                "<button type=submit>Save group</button></form>",
                device.device_id,
                csrf,
                device.group or "",
            )
        )
    return join(body)


def _settings_form(device: Device, csrf: str) -> Markup:
    return html(
        "<h2>Settings</h2><p>Empty fields are not set: the group's or the device's own file "
        "apply. The device applies them at its next check-in.</p>"
        '<form method=post action="/console/devices/{}/settings" class=stack>'
        '<input type=hidden name=csrf value="{}">{}'
        "<button type=submit>Save settings</button></form>",
        device.device_id,
        csrf,
        settings_fields(device.settings),
    )


def groups_page(
    groups: Mapping[str, Mapping[str, Any]],
    members: Mapping[str, int],
    *,
    csrf: str | None,
    message: str | None,
    error: str | None,
) -> Markup:
    """Every group with its settings and devices; (read-write) a form for each, and a new one."""
    parts = [notice(message), notice(error, error=True)]
    parts.append(
        table(
            ("Group", "Devices", "Settings"),
            (
                (name, members.get(name, 0), json.dumps(dict(settings), sort_keys=True))
                for name, settings in sorted(groups.items())
            ),
            empty="No group yet.",
        )
    )
    if csrf is not None:
        for name, settings in sorted(groups.items()):
            parts.append(
                html(
                    "<h2>{}</h2><form method=post action=/console/groups class=stack>"
                    '<input type=hidden name=csrf value="{}">'
                    '<input type=hidden name=group value="{}">{}'
                    "<button type=submit>Save group settings</button></form>",
                    name,
                    csrf,
                    name,
                    settings_fields(settings),
                )
            )
        parts.append(
            html(
                "<h2>New group</h2><form method=post action=/console/groups class=stack>"
                '<input type=hidden name=csrf value="{}">'
                "<label>Name <input name=group maxlength=64 required></label>{}"
                "<button type=submit>Create group</button></form>",
                csrf,
                settings_fields({}),
            )
        )
    return join(parts)


@dataclass(frozen=True)
class CallFilters:
    """The calls page's filters, as the form sent them (dates as YYYY-MM-DD)."""

    device_id: str = ""
    end_reason: str = ""
    since: str = ""
    until: str = ""


def _join_form(call: CallRecord, csrf: str | None, joinable: Set[str]) -> Markup | str:
    """A live call's "open" cell: with a read-write session, for a call on the fleet's own
    LiveKit server, a button that mints an operator token for the admin and opens the
    operator page in a new tab."""
    if csrf is None or call.call_id not in joinable:
        return "open"
    return html(
        'open <form method=post action="/console/calls/{}/join" target=_blank>'
        '<input type=hidden name=csrf value="{}"><button type=submit>Join call</button></form>',
        call.call_id,
        csrf,
    )


def calls_page(
    calls: Sequence[CallRecord],
    devices: Sequence[Device],
    filters: CallFilters,
    *,
    total: int,
    error: str | None,
    csrf: str | None = None,
    joinable: Set[str] = frozenset(),
) -> Markup:
    """The filter form (a GET: bookmarkable, no CSRF needed) and the calls, newest first;
    (read-write) a "Join call" button, which opens the operator page, on each live call in
    `joinable` (those on the fleet's own LiveKit server)."""
    names = {d.device_id: d.name for d in devices}
    device_options = join(
        html(
            '<option value="{}"{}>{}</option>',
            value,
            Markup(" selected" if value == filters.device_id else ""),
            label,
        )
        for value, label in [("", "all devices")]
        + [(d.device_id, f"{d.name or '(no name)'} ({d.device_id})") for d in devices]
    )
    reason_options = join(
        html(
            '<option value="{}"{}>{}</option>',
            value,
            Markup(" selected" if value == filters.end_reason else ""),
            value or "any",
        )
        for value in ["", *sorted(r.value for r in EndReason)]
    )
    form = html(
        "<form method=get action=/console/calls class=filters>"
        "<label>Device <select name=device_id>{}</select></label>"
        "<label>End reason <select name=end_reason>{}</select></label>"
        '<label>From <input type=date name=since value="{}"></label>'
        '<label>To (inclusive) <input type=date name=until value="{}"></label>'
        "<button type=submit>Filter</button> <a href=/console/calls>clear</a></form>",
        device_options,
        reason_options,
        filters.since,
        filters.until,
    )
    rows = (
        (
            when(c.created_at),
            html("{}<br><small>{}</small>", names.get(c.device_id, "?"), c.device_id),
            c.trigger,
            when(c.ended_at) if c.ended_at is not None else _join_form(c, csrf, joinable),
            c.end_reason or "-",
            duration(c.duration_ms),
            c.call_id,
        )
        for c in calls
    )
    noun = "call" if total == 1 else "calls"
    shown = (
        f"{total} {noun}" if total == len(calls) else f"the newest {len(calls)} of {total} calls"
    )
    return html(
        "{}{}<p id=count>{}</p>{}",
        form,
        notice(error, error=True),
        shown,
        table(
            ("Started", "Device", "Trigger", "Ended", "End reason", "Duration", "Call"),
            rows,
            empty="No call matches.",
        ),
    )


def codes_page(
    codes: Sequence[EnrollmentCode],
    *,
    csrf: str | None,
    new_code: str | None,
    error: str | None,
) -> Markup:
    """The create form (read-write), the new code once, and the stored codes (never a code)."""
    parts = [notice(error, error=True)]
    if new_code is not None:
        parts.append(
            html(
                "<section id=new-code class=notice><p>The new enrollment code, shown this once:</p>"
                "<p class=secret>{}</p><p>Copy it now: it is stored hashed and cannot be shown "
                "again.</p></section>",
                new_code,
            )
        )
    if csrf is not None:
        ttl_options = join(
            html('<option value="{}">{}</option>', s, label) for s, label in CODE_TTLS
        )
        parts.append(
            html(
                "<h2>New code</h2><form method=post action=/console/enrollment-codes class=stack>"
                '<input type=hidden name=csrf value="{}">'
                "<label>Label <input name=label maxlength=100></label>"
                "<label>Valid for <select name=ttl_s>{}</select></label>"
                "<label><input type=checkbox name=requires_approval value=1> "
                "Requires approval (the device waits as pending)</label>"
                "<label>Group (optional) <input name=group maxlength=64></label>"
                "<button type=submit>Create code</button></form>",
                csrf,
                ttl_options,
            )
        )
    rows = (
        (
            c.code_hash[:12],
            c.label or "-",
            when(c.created_at),
            when(c.expires_at),
            "-" if c.used_at is None else html("{} by {}", when(c.used_at), c.device_id or "?"),
            "yes" if c.requires_approval else "no",
            c.group or "-",
        )
        for c in codes
    )
    parts.append(
        html(
            "<h2>Codes</h2>{}",
            table(
                ("Code id", "Label", "Created", "Expires", "Used", "Approval", "Group"),
                rows,
                empty="No enrollment code yet.",
            ),
        )
    )
    return join(parts)


def actions_page(actions: Sequence[AdminAction]) -> Markup:
    """Who did what, newest first."""
    return table(
        ("When", "Who", "Action", "Target", "Detail"),
        (
            (when(a.at), a.actor, a.action, a.target, json.dumps(dict(a.detail), sort_keys=True))
            for a in actions
        ),
        empty="No admin action recorded yet.",
    )


def _last_result(delivery: Delivery) -> str:
    if delivery.last_error is None:
        return "-" if delivery.last_status is None else f"HTTP {delivery.last_status}"
    if delivery.last_status is not None:
        return f"HTTP {delivery.last_status}"
    return delivery.last_error.value


def deliveries_page(deliveries: Sequence[Delivery], state: str, *, error: str | None) -> Markup:
    """The newest fleet events' webhook deliveries: state, attempts, the last result."""
    options = join(
        html(
            '<option value="{}"{}>{}</option>',
            value,
            Markup(" selected" if value == state else ""),
            value or "any",
        )
        for value in ["", *(s.value for s in DeliveryState)]
    )
    form = html(
        "<form method=get action=/console/webhooks class=filters>"
        "<label>State <select name=state>{}</select></label>"
        "<button type=submit>Filter</button></form>",
        options,
    )
    rows = (
        (
            when(d.created_at),
            html("{}<br><small>{}</small>", d.kind, d.event_id),
            d.device_id,
            html('<span class="badge {}">{}</span>', d.state.value, d.state.value),
            d.attempts,
            when(d.last_attempt_at),
            _last_result(d),
            "-" if d.finished_at is not None else when(d.next_attempt_at),
        )
        for d in deliveries
    )
    return html(
        "{}{}{}",
        form,
        notice(error, error=True),
        table(
            (
                "Event at",
                "Event",
                "Device",
                "State",
                "Attempts",
                "Last attempt",
                "Last result",
                "Next",
            ),
            rows,
            empty="No webhook delivery recorded (is [webhooks] configured?).",
        ),
    )


def login_page(login_csrf: str, error: str | None) -> Markup:
    """The sign-in form: an admin token, never echoed back."""
    return html(
        "{}<form method=post action=/console/login class=stack>"
        '<input type=hidden name=login_csrf value="{}">'
        "<label>Admin token <input type=password name=token autocomplete=off required></label>"
        "<button type=submit>Sign in</button></form>"
        "<p>Make a token on the backend's machine: "
        "<code>provisioning admin-token create --name NAME --scope read-write</code></p>",
        notice(error, error=True),
        login_csrf,
    )


def header(name: str, scope: str, csrf: str, nav: Sequence[tuple[str, str]]) -> Markup:
    """The navigation, who is signed in, and the sign-out form."""
    links = join(html('<a href="{}">{}</a>', href, label) for href, label in nav)
    return html(
        "<header><nav>{}</nav><span class=who>{} ({})</span>"
        '<form method=post action=/console/logout><input type=hidden name=csrf value="{}">'
        "<button type=submit>Sign out</button></form></header>",
        links,
        name,
        scope,
        csrf,
    )


def error_body(message: str) -> Markup:
    """A refusal, as a page body."""
    return html(
        '{}<p><a href="/console/devices">Back to the devices</a></p>', notice(message, error=True)
    )
