"""The `provisioning` command: serve the API and administer codes, devices and calls."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from provisioning.backend import open_backend
from provisioning.config import Config, load_config
from provisioning.errors import ConfigError, ProvisioningError
from provisioning.http import BackendServer
from provisioning.logs import configure_logging, printable

logger = logging.getLogger(__name__)

EXIT_ERROR = 1
EXIT_USAGE = 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="provisioning", description="Provisioning backend for voice kiosks."
    )
    parser.add_argument("--config", required=True, help="path to the TOML config file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("serve", help="run the device HTTP API")

    enroll_code = commands.add_parser("enroll-code", help="one-time enrollment codes")
    enroll_code_cmds = enroll_code.add_subparsers(dest="action", required=True)
    create = enroll_code_cmds.add_parser("create", help="create a code and print it")
    create.add_argument("--ttl", type=int, default=3600, help="seconds the code is valid")
    create.add_argument("--label", default="", help="note stored with the code")

    devices = commands.add_parser("devices", help="enrolled devices")
    devices_cmds = devices.add_subparsers(dest="action", required=True)
    devices_cmds.add_parser("list", help="list devices")
    revoke = devices_cmds.add_parser("revoke", help="refuse a device from now on")
    revoke.add_argument("device_id")

    calls = commands.add_parser("calls", help="recorded calls")
    calls_cmds = calls.add_subparsers(dest="action", required=True)
    calls_list = calls_cmds.add_parser("list", help="list calls")
    calls_list.add_argument("--device", default=None, help="only this device's calls")
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


async def _admin(config: Config, args: argparse.Namespace) -> int:
    async with open_backend(config) as backend:
        core = backend.core
        if args.command == "enroll-code":
            print(await core.create_enrollment_code(ttl_s=args.ttl, label=args.label))
        elif args.command == "devices" and args.action == "list":
            _print_table(
                ("DEVICE_ID", "STATUS", "CREATED", "FLAGGED", "FLAG", "NAME"),
                (
                    (
                        d.device_id,
                        d.status.value,
                        _when(d.created_at),
                        _when(d.flagged_at),
                        d.flag_reason or "-",
                        d.name,
                    )
                    for d in await core.list_devices()
                ),
            )
        elif args.command == "devices" and args.action == "revoke":
            device = await core.revoke_device(args.device_id)
            print(f"{device.device_id} {device.status.value}")
        elif args.command == "calls":
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
                    for c in await core.list_calls(args.device)
                ),
            )
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
