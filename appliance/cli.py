"""`appliance`: run the daemon, enroll, press the button, ask the daemon's state."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from appliance.control import follow_lines, send_command
from appliance.daemon import CONTROL_SOCKET_NAME, Daemon
from appliance.errors import ApplianceError, NotEnrolledError, SettingsError
from appliance.provisioning_client import DeviceKey, Enrollment
from appliance.provisioning_client.enrollment import enroll_device
from appliance.service.doctor import package_version
from appliance.settings import LoggingSettings, Settings, load_settings
from appliance.status.journal import setup_logging
from appliance.status.redact import install_everywhere

DEFAULT_CONFIG = Path("/etc/kiosk-voice/appliance.toml")

EXIT_SETTINGS = 2
EXIT_NOT_ENROLLED = 3
EXIT_FAILED = 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `appliance` command."""
    args = _parser().parse_args(argv)
    install_everywhere()  # logging's last resort too, for commands that configure none
    if getattr(args, "raw_config", False):  # doctor and support-bundle judge the file themselves
        return int(args.func(args.config, args))
    try:
        settings = load_settings(args.config)
        return int(args.func(settings, args))
    except SettingsError as exc:
        print(f"appliance: settings error: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    except NotEnrolledError as exc:
        print(f"appliance: {exc}", file=sys.stderr)
        return EXIT_NOT_ENROLLED
    except ApplianceError as exc:
        print(f"appliance: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance", description=__doc__)
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help=f"settings file ({DEFAULT_CONFIG})"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    doctor = commands.add_parser("doctor", help="check settings, key, backend, LiveKit, hardware")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(func=_doctor, raw_config=True)

    firstboot = commands.add_parser(
        "firstboot", help="first boot: enroll from the card's kiosk.txt (run by its unit)"
    )
    firstboot.add_argument("--card", type=Path, default=Path("/boot/firmware/kiosk.txt"))
    firstboot.set_defaults(func=_firstboot, raw_config=True)

    bundle = commands.add_parser(
        "support-bundle", help="write a tar.gz for support (settings redacted, doctor, journal)"
    )
    bundle.add_argument(
        "--output", "-o", type=Path, help="file to write (default: ./kiosk-support-*)"
    )
    bundle.set_defaults(func=_support_bundle, raw_config=True)

    run = commands.add_parser("run", help="run the daemon")
    run.add_argument(
        "--stdin-button", action="store_true", help="each line read from stdin presses the button"
    )
    run.set_defaults(func=_run)

    enroll = commands.add_parser("enroll", help="enroll with a one-time code from the admin")
    enroll.add_argument("--code", required=True)
    enroll.set_defaults(func=_enroll)

    key = commands.add_parser("key", help="print this device's id and public key")
    key.set_defaults(func=_key)

    press = commands.add_parser("press", help="press the call button of the running daemon")
    press.add_argument(
        "--long", action="store_true", help="hold it for a long press (ends a call or attempt)"
    )
    press.set_defaults(func=_control, command="press")

    status = commands.add_parser("status", help="print the running daemon's state")
    status.set_defaults(func=_control, command="status")

    transcript = commands.add_parser(
        "transcript", help="print the running call's transcript (a line of JSON each)"
    )
    transcript.add_argument(
        "--follow", action="store_true", help="keep printing new lines until interrupted"
    )
    transcript.add_argument(
        "--text", action="store_true", help="'speaker: text' instead of JSON (final lines only)"
    )
    transcript.set_defaults(func=_transcript)

    wake_test = commands.add_parser(
        "wake-test", help="run the wake-word engine over a WAV file or the live microphone"
    )
    wake_test.add_argument("wav", nargs="?", type=Path, help="WAV file (default: the microphone)")
    wake_test.add_argument(
        "--seconds", type=float, default=60.0, help="how long to listen live (60)"
    )
    wake_test.add_argument(
        "--threshold",
        type=float,
        help="override the micro probability cutoff or the Porcupine sensitivity",
    )
    wake_test.set_defaults(func=_wake_test)

    audio_test = commands.add_parser(
        "audio-test", help="play a test sound, record it back, report level, echo delay and AEC"
    )
    audio_test.add_argument("--seconds", type=float, default=3.0, help="length of the test sound")
    audio_test.set_defaults(func=_audio_test)
    return parser


def _doctor(config: Path, args: argparse.Namespace) -> int:
    from appliance.service.doctor import run_doctor

    report = asyncio.run(run_doctor(config))
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.format())
    return 0 if report.ok else EXIT_FAILED


def _firstboot(config: Path, args: argparse.Namespace) -> int:
    from appliance.service.firstboot import run_firstboot

    setup_logging(LoggingSettings(), device_id="")
    return run_firstboot(args.card, config)


def _support_bundle(config: Path, args: argparse.Namespace) -> int:
    from appliance.service.support_bundle import make_bundle

    print(make_bundle(config, args.output))
    return 0


def _audio_test(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.audio.selftest import run_audio_test

    return EXIT_FAILED if not asyncio.run(run_audio_test(settings.board.audio, args.seconds)) else 0


def _wake_test(settings: Settings, args: argparse.Namespace) -> int:
    from appliance.triggers.wake.wake_test import listen_live, scan_wav, with_threshold

    settings = with_threshold(settings, args.threshold)
    if args.wav is not None:
        scan_wav(settings, args.wav, print)
    else:
        asyncio.run(listen_live(settings, args.seconds, print))
    return 0


def _run(settings: Settings, args: argparse.Namespace) -> int:
    enrollment = Enrollment.load(settings.device.state_dir)
    setup_logging(settings.logging, device_id=enrollment.device_id)
    asyncio.run(_serve(settings, stdin_button=args.stdin_button))
    return 0


async def _serve(settings: Settings, *, stdin_button: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Daemon(settings) as daemon:
        if stdin_button:
            threading.Thread(
                target=_read_stdin_presses,
                args=(daemon, loop, stop),
                name="stdin-button",
                daemon=True,
            ).start()
        await daemon.run(stop)


def _read_stdin_presses(
    daemon: Daemon, loop: asyncio.AbstractEventLoop, stop: asyncio.Event
) -> None:
    for _line in sys.stdin:
        daemon.press()
    logging.getLogger(__name__).info("stdin closed: stopping")
    loop.call_soon_threadsafe(stop.set)


def _enroll(settings: Settings, args: argparse.Namespace) -> int:
    enrollment = asyncio.run(
        enroll_device(
            settings.device.state_dir,
            settings.backend.url,
            settings.device.name,
            args.code,
            timeout_s=settings.backend.timeout_s,
        )
    )
    print(f"enrolled as {enrollment.device_id}")
    return 0


def _key(settings: Settings, args: argparse.Namespace) -> int:
    key = DeviceKey.load_or_create(settings.device.state_dir)
    print(f"device id:  {key.fingerprint}")
    print(f"public key: {key.public_key_b64}")
    return 0


def _control(settings: Settings, args: argparse.Namespace) -> int:
    path = settings.device.state_dir / CONTROL_SOCKET_NAME
    try:
        command = "press long" if getattr(args, "long", False) else args.command
        answer = asyncio.run(send_command(path, command))
    except (OSError, TimeoutError) as exc:
        print(f"appliance: no daemon answers on {path}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(answer)
    return 0 if not answer.startswith("error") else EXIT_FAILED


def _transcript(settings: Settings, args: argparse.Namespace) -> int:
    path = settings.device.state_dir / CONTROL_SOCKET_NAME
    command = "transcript follow" if args.follow else "transcript"

    async def show() -> None:
        async for line in follow_lines(path, command):
            if line.startswith("error"):
                raise ApplianceError(line)
            if not args.text:
                print(line, flush=True)
                continue
            entry = json.loads(line)
            if entry.get("final"):
                print(f"{entry['speaker']}: {entry['text']}", flush=True)

    try:
        asyncio.run(show())
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"appliance: no daemon answers on {path}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
