"""The `provisioning` command: serve the API, and every admin action, a thin client of the core."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from provisioning.admin import AdminScope, AdminTokens
from provisioning.admin.api import delivery_state, end_reason, parse_time
from provisioning.backend import open_backend
from provisioning.config import Config, load_config
from provisioning.core import ProvisioningCore
from provisioning.errors import BadRequestError, ConfigError, ProvisioningError
from provisioning.http import BackendServer
from provisioning.logs import configure_logging, printable
from provisioning.models import Device
from provisioning.operators import Operators
from provisioning.webhooks_out import Delivery, WebhookOutbox

logger = logging.getLogger(__name__)

EXIT_ERROR = 1
EXIT_USAGE = 2
# Who the admin actions' record says did what the CLI did.
CLI_ACTOR = "cli"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="provisioning", description="Provisioning backend for voice kiosks."
    )
    parser.add_argument("--config", required=True, help="path to the TOML config file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("serve", help="run the device HTTP API, the admin API and the console")

    enroll_code = commands.add_parser("enroll-code", help="one-time enrollment codes")
    enroll_code_cmds = enroll_code.add_subparsers(dest="action", required=True)
    create = enroll_code_cmds.add_parser("create", help="create a code and print it")
    create.add_argument("--ttl", type=int, default=3600, help="seconds the code is valid")
    create.add_argument("--label", default="", help="note stored with the code")
    create.add_argument(
        "--requires-approval",
        action="store_true",
        help="a device enrolled with it waits as pending for an admin",
    )
    create.add_argument("--group", default=None, help="the group its device joins")
    enroll_code_cmds.add_parser("list", help="list codes (never the codes themselves)")

    devices = commands.add_parser("devices", help="enrolled devices")
    devices_cmds = devices.add_subparsers(dest="action", required=True)
    devices_cmds.add_parser("list", help="list devices")
    for action, what in (
        ("show", "show one device, its status report and settings"),
        ("approve", "let a pending device in"),
        ("reject", "refuse a pending device for good"),
        ("revoke", "refuse a device from now on"),
    ):
        devices_cmds.add_parser(action, help=what).add_argument("device_id")
    settings = devices_cmds.add_parser("set-settings", help="replace a device's own settings")
    settings.add_argument("device_id")
    settings.add_argument("settings", help="a JSON object, e.g. '{\"speaker_volume\": 0.5}'")
    group = devices_cmds.add_parser("set-group", help="put a device in a group (or none)")
    group.add_argument("device_id")
    group.add_argument("group", nargs="?", default=None, help="leave out for no group")

    groups = commands.add_parser("groups", help="device groups and their settings")
    groups_cmds = groups.add_subparsers(dest="action", required=True)
    groups_cmds.add_parser("list", help="list groups")
    group_settings = groups_cmds.add_parser("set-settings", help="replace a group's settings")
    group_settings.add_argument("group")
    group_settings.add_argument("settings", help="a JSON object")

    calls = commands.add_parser("calls", help="recorded calls")
    calls_cmds = calls.add_subparsers(dest="action", required=True)
    calls_list = calls_cmds.add_parser("list", help="list calls, oldest first")
    calls_list.add_argument("--device", default=None, help="only this device's calls")
    calls_list.add_argument("--reason", default=None, help="only calls with this end reason")
    calls_list.add_argument("--since", default=None, help="started at or after (ISO 8601, UTC)")
    calls_list.add_argument("--until", default=None, help="started before (ISO 8601, UTC)")
    operator = calls_cmds.add_parser(
        "operator-token", help="a token and join link for a person to join a live call"
    )
    operator.add_argument("call_id")
    operator.add_argument(
        "--base-url", default=None, help="the backend's public URL, for the join link"
    )

    actions = commands.add_parser("actions", help="the admin actions recorded")
    actions_cmds = actions.add_subparsers(dest="action", required=True)
    actions_list = actions_cmds.add_parser("list", help="newest first")
    actions_list.add_argument("--limit", type=int, default=100)

    webhooks = commands.add_parser("webhooks", help="webhook deliveries of fleet events")
    webhooks_cmds = webhooks.add_subparsers(dest="action", required=True)
    webhooks_list = webhooks_cmds.add_parser("list", help="newest first, with the last attempt")
    webhooks_list.add_argument("--state", default=None, help="pending, delivered or failed")
    webhooks_list.add_argument("--limit", type=int, default=50)

    tokens = commands.add_parser("admin-token", help="tokens for the admin API and console")
    tokens_cmds = tokens.add_subparsers(dest="action", required=True)
    token_create = tokens_cmds.add_parser("create", help="make a token and print it, once")
    token_create.add_argument("--name", required=True, help="who holds it (letters, digits, _.@-)")
    token_create.add_argument(
        "--scope", required=True, choices=[s.value for s in AdminScope], help="what it may do"
    )
    tokens_cmds.add_parser("list", help="list tokens (never the tokens themselves)")
    token_revoke = tokens_cmds.add_parser("revoke", help="revoke a token, ending its sessions")
    token_revoke.add_argument("token", help="its name or id")
    return parser


def _when(epoch_s: float | None) -> str:
    if epoch_s is None:
        return "-"
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_table(header: tuple[str, ...], body: Iterable[tuple[str, ...]]) -> None:
    # Whatever a device managed to store, an admin's terminal gets no control characters.
    rows = [header, *(tuple(printable(cell) for cell in row) for row in body)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"settings are not JSON: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise BadRequestError("settings must be a JSON object")
    return value


def _print_device(core: ProvisioningCore, device: Device) -> None:
    fields = (
        ("device_id", device.device_id),
        ("name", device.name),
        ("status", device.status.value),
        ("offline", "yes" if core.offline(device) else "no"),
        ("last_seen", _when(device.last_seen)),
        ("state", device.state or "-"),
        ("last_error", device.last_error or "-"),
        ("firmware", device.firmware or "-"),
        ("board", device.board or "-"),
        ("clock_offset_s", "-" if device.clock_offset_s is None else str(device.clock_offset_s)),
        ("group", device.group or "-"),
        ("settings", json.dumps(dict(device.settings), sort_keys=True)),
        ("effective_settings", json.dumps(core.settings_of(device), sort_keys=True)),
        ("created", _when(device.created_at)),
    )
    for key, value in fields:
        print(f"{key}: {printable(value)}")


def _result(delivery: Delivery) -> str:
    if delivery.last_status is not None:
        return f"HTTP {delivery.last_status}"
    return "-" if delivery.last_error is None else delivery.last_error.value


async def _devices(core: ProvisioningCore, args: argparse.Namespace) -> None:
    if args.action == "list":
        _print_table(
            (
                "DEVICE_ID",
                "STATUS",
                "SEEN",
                "OFFLINE",
                "GROUP",
                "CREATED",
                "FLAGGED",
                "FLAG",
                "NAME",
            ),
            (
                (
                    d.device_id,
                    d.status.value,
                    _when(d.last_seen),
                    "offline" if core.offline(d) else "-",
                    d.group or "-",
                    _when(d.created_at),
                    _when(d.flagged_at),
                    d.flag_reason or "-",
                    d.name,
                )
                for d in await core.list_devices()
            ),
        )
        return
    device_id = args.device_id
    if args.action == "show":
        _print_device(core, await core.get_device(device_id))
        return
    if args.action == "approve":
        device = await core.approve_device(device_id, actor=CLI_ACTOR)
    elif args.action == "reject":
        device = await core.reject_device(device_id, actor=CLI_ACTOR)
    elif args.action == "revoke":
        device = await core.revoke_device(device_id, actor=CLI_ACTOR)
    elif args.action == "set-settings":
        settings = _json_object(args.settings)
        device = await core.set_device_settings(device_id, settings, actor=CLI_ACTOR)
    else:
        device = await core.set_device_group(device_id, args.group, actor=CLI_ACTOR)
    print(f"{device.device_id} {device.status.value}")


async def _calls(core: ProvisioningCore, args: argparse.Namespace, config: Config) -> None:
    if args.action == "operator-token":
        grant = await Operators(core, config.livekit).grant(args.call_id, actor=CLI_ACTOR)
        base = (args.base_url or f"http://{config.server.host}:{config.server.port}").rstrip("/")
        print(f"identity {grant.identity}, expires {_when(grant.expires_at)}")
        print(base + grant.join_path())
        return
    calls = await core.list_calls(
        args.device,
        end_reason=end_reason(args.reason),
        since=None if args.since is None else parse_time(args.since, "--since"),
        until=None if args.until is None else parse_time(args.until, "--until"),
    )
    _print_table(
        ("CALL_ID", "DEVICE_ID", "TRIGGER", "STARTED", "ENDED", "REASON", "MS"),
        (
            (
                c.call_id,
                c.device_id,
                c.trigger,
                _when(c.created_at),
                _when(c.ended_at),
                c.end_reason or "-",
                "-" if c.duration_ms is None else str(c.duration_ms),
            )
            for c in calls
        ),
    )


async def _admin_tokens(tokens: AdminTokens, args: argparse.Namespace) -> None:
    if args.action == "create":
        _, secret = await tokens.create(args.name, AdminScope(args.scope))
        print(secret)
    elif args.action == "list":
        _print_table(
            ("TOKEN_ID", "NAME", "SCOPE", "CREATED", "LAST_USED", "REVOKED"),
            (
                (
                    t.token_id,
                    t.name,
                    t.scope.value,
                    _when(t.created_at),
                    _when(t.last_used_at),
                    _when(t.revoked_at),
                )
                for t in await tokens.list_tokens()
            ),
        )
    else:
        token = await tokens.revoke(args.token)
        print(f"{token.token_id} {token.name} revoked")


async def _admin(config: Config, args: argparse.Namespace) -> int:
    async with open_backend(config) as backend:
        core = backend.core
        if args.command == "enroll-code" and args.action == "create":
            print(
                await core.create_enrollment_code(
                    ttl_s=args.ttl,
                    label=args.label,
                    requires_approval=args.requires_approval,
                    group=args.group,
                    actor=CLI_ACTOR,
                )
            )
        elif args.command == "enroll-code":
            _print_table(
                (
                    "CODE_ID",
                    "CREATED",
                    "EXPIRES",
                    "USED",
                    "DEVICE_ID",
                    "APPROVAL",
                    "GROUP",
                    "LABEL",
                ),
                (
                    (
                        c.code_hash[:12],
                        _when(c.created_at),
                        _when(c.expires_at),
                        _when(c.used_at),
                        c.device_id or "-",
                        "required" if c.requires_approval else "-",
                        c.group or "-",
                        c.label,
                    )
                    for c in await core.list_enrollment_codes()
                ),
            )
        elif args.command == "devices":
            await _devices(core, args)
        elif args.command == "groups" and args.action == "list":
            groups = await core.list_groups()
            _print_table(
                ("GROUP", "SETTINGS"),
                ((name, json.dumps(dict(s), sort_keys=True)) for name, s in sorted(groups.items())),
            )
        elif args.command == "groups":
            settings = _json_object(args.settings)
            await core.set_group_settings(args.group, settings, actor=CLI_ACTOR)
            print(f"{args.group} saved")
        elif args.command == "calls":
            await _calls(core, args, config)
        elif args.command == "actions":
            _print_table(
                ("AT", "ACTOR", "ACTION", "TARGET", "DETAIL"),
                (
                    (_when(a.at), a.actor, a.action, a.target, json.dumps(dict(a.detail)))
                    for a in await core.list_admin_actions(args.limit)
                ),
            )
        elif args.command == "webhooks":
            deliveries = await WebhookOutbox(backend.storage.db).list_deliveries(
                limit=args.limit, state=delivery_state(args.state)
            )
            _print_table(
                ("EVENT_ID", "TYPE", "DEVICE_ID", "AT", "STATE", "TRIES", "LAST_TRY", "RESULT"),
                (
                    (
                        d.event_id,
                        d.kind,
                        d.device_id or "-",
                        _when(d.created_at),
                        d.state.value,
                        str(d.attempts),
                        _when(d.last_attempt_at),
                        _result(d),
                    )
                    for d in deliveries
                ),
            )
        elif args.command == "admin-token":
            await _admin_tokens(AdminTokens(backend.storage.db), args)
    return 0


async def serve(config: Config, stop: asyncio.Event | None = None) -> None:
    """Serve the API until `stop` is set (or SIGTERM/SIGINT when no event is given)."""
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    async with BackendServer(config) as server:
        print(f"listening on {server.url}", file=sys.stderr, flush=True)
        await stop.wait()
    logger.info("provisioning API stopped")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `provisioning` console script; returns the exit status."""
    args = _build_parser().parse_args(argv)
    # Admin commands print their result on stdout; only `serve` narrates at info level.
    quiet = logging.INFO if args.command == "serve" else logging.WARNING
    configure_logging(logging.DEBUG if args.verbose else quiet)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"provisioning: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "serve":
            asyncio.run(serve(config))
            return 0
        return asyncio.run(_admin(config, args))
    except ProvisioningError as exc:
        print(f"provisioning: {exc}", file=sys.stderr)
        return EXIT_ERROR
