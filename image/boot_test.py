"""The image's boot test: a card with kiosk.txt, first boot in qemu, enrollment, the unit ready.

Run by image/boot-test. It copies the built image, writes kiosk.txt onto its FAT partition
with mtools, starts LiveKit and the backend on loopback, boots qemu's raspi3b with the card,
and watches the serial console (the image forwards the journal there). Passes when the device
has enrolled, the code is gone from the card, and kiosk-appliance.service is active in a
state its journal line names. Prints the time from power-on to ready.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from demo.stack import LocalStack

ROOT = Path(__file__).resolve().parent.parent
BOOT_OFFSET = 4 * 1024 * 1024  # image/genimage.cfg: the FAT partition starts at 4 MiB
GUEST_BACKEND = ("10.0.2.100", 8080)  # the one address the guest can reach
READY = re.compile(r"state \w+ -> (ready|backend_unreachable|credentials_rejected|audio_fault)")
ACTIVE = re.compile(r"Started kiosk-appliance\.service|Started .*Voice kiosk appliance")


def mtools(image: Path, *args: str) -> str:
    """Run an mtools command on the card's FAT partition."""
    target = f"{image}@@{BOOT_OFFSET}"
    argv = [args[0], "-i", target, *args[1:]]
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


def boot_files(image: Path, workdir: Path) -> tuple[Path, Path, Path]:
    """The kernel, initramfs and Pi 3 device tree from the card, for qemu's -kernel."""
    names = mtools(image, "mdir", "-b", "::/").split()
    kernel = next(n for n in names if "vmlinuz" in n)
    initrd = next(n for n in names if "initrd" in n)
    dtb = next(n for n in names if n.endswith("bcm2837-rpi-3-b.dtb"))
    out = []
    for name in (kernel, initrd, dtb):
        local = workdir / Path(name).name
        mtools(image, "mcopy", "-o", name, str(local))
        out.append(local)
    return out[0], out[1], out[2]


@dataclass
class Outcome:
    """What one boot left behind."""

    card: Path
    console: Path
    code: str
    device_names: list[str]
    ready_s: float | None
    active_s: float | None
    enrolled_s: float | None
    state_line: str


async def boot(image: Path, timeout_s: float) -> Outcome:
    workdir = Path(tempfile.mkdtemp(prefix="kiosk-boot-"))
    card = workdir / "sd.img"
    shutil.copyfile(image, card)  # the test writes to its card, never to the built image
    console = workdir / "console.log"
    async with LocalStack(workdir=workdir / "stack") as stack:
        code = await stack.backend.core.create_enrollment_code(ttl_s=3600, label="qemu")
        port = int(stack.backend.url.rstrip("/").rsplit(":", 1)[1])
        kiosk_txt = workdir / "kiosk.txt"
        kiosk_txt.write_text(
            f'backend_url = "http://{GUEST_BACKEND[0]}:{GUEST_BACKEND[1]}"\n'
            f'enrollment_code = "{code}"\nboard = "simulated"\nname = "qemu-kiosk"\n'
            'wake_word = "off"\n'
        )
        mtools(card, "mcopy", "-o", str(kiosk_txt), "::kiosk.txt")
        kernel, initrd, dtb = boot_files(card, workdir)
        netdev = (
            "user,id=net0,restrict=on,"
            f"guestfwd=tcp:{GUEST_BACKEND[0]}:{GUEST_BACKEND[1]}-tcp:127.0.0.1:{port}"
        )
        argv = [
            "qemu-system-aarch64", "-M", "raspi3b", "-m", "1G", "-smp", "4",
            "-kernel", str(kernel), "-initrd", str(initrd), "-dtb", str(dtb),
            "-append", "console=ttyAMA0,115200 root=LABEL=ROOT rootwait rw fsck.repair=yes "
            "net.ifnames=0 dwc_otg.lpm_enable=0",
            "-drive", f"file={card},if=sd,format=raw",
            "-device", "usb-net,netdev=net0", "-netdev", netdev,
            "-nographic", "-monitor", "none", "-serial", f"file:{console}",
        ]  # fmt: skip
        print(f"boot-test: enrollment code issued; booting {image.name} in qemu raspi3b")
        powered_on = time.monotonic()
        qemu = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL)
        ready_s = active_s = enrolled_s = None
        state_line = ""
        try:
            while time.monotonic() - powered_on < timeout_s:
                await asyncio.sleep(1)
                text = console.read_text(errors="replace") if console.exists() else ""
                if enrolled_s is None and "first boot: enrolled as" in text:
                    enrolled_s = time.monotonic() - powered_on
                    print(f"boot-test: enrolled after {enrolled_s:.0f} s")
                if active_s is None and ACTIVE.search(text):
                    active_s = time.monotonic() - powered_on
                if ready_s is None and (m := READY.search(text)):
                    ready_s = time.monotonic() - powered_on
                    state_line = text[text.rfind("\n", 0, m.start()) + 1 : text.find("\n", m.end())]
                    print(f"boot-test: first state after start-up at {ready_s:.0f} s: {m.group(1)}")
                if ready_s is not None and active_s is not None:
                    await asyncio.sleep(3)  # let the card's FAT writes settle
                    break
                if qemu.returncode is not None:
                    break
        finally:
            if qemu.returncode is None:
                qemu.terminate()
                await qemu.wait()
        devices = await stack.backend.core.list_devices()
    return Outcome(
        card, console, code, [d.name for d in devices], ready_s, active_s, enrolled_s, state_line
    )


def judge(o: Outcome, keep: Path | None) -> int:
    """Check what the boot left behind; print the verdict and the figure."""
    card, console, code, ready_s, active_s = o.card, o.console, o.code, o.ready_s, o.active_s
    enrolled_s, state_line = o.enrolled_s, o.state_line
    card_text = subprocess.run(
        ["mtype", "-i", f"{card}@@{BOOT_OFFSET}", "::kiosk.txt"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    failures = []
    if "qemu-kiosk" not in o.device_names:
        failures.append("the backend has no device qemu-kiosk: it did not enroll")
    if code in card_text:
        failures.append("the enrollment code is still on the card")
    if "# first boot: enrolled as" not in card_text:
        failures.append("kiosk.txt has no 'enrolled' status line")
    if active_s is None:
        failures.append("kiosk-appliance.service never became active")
    if ready_s is None or "ready" not in state_line:
        failures.append(f"the daemon did not reach ready (last: {state_line or 'nothing'})")
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(console, keep / "console.log")
    print(f"boot-test: console log: {console}")
    for line in failures:
        print(f"boot-test: FAIL {line}")
    if not failures:
        assert ready_s is not None
        print(f"boot-test: PASS power-on to ready {ready_s:.0f} s (enrolled at {enrolled_s:.0f} s)")
        print(f"boot-test: journal line: {state_line.strip()}")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", type=Path, default=ROOT / "dist" / "kiosk-voice-arm64.img")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait (900)")
    parser.add_argument("--keep-log", type=Path, help="copy the console log to this folder")
    args = parser.parse_args()
    if not args.image.exists():
        print(f"boot-test: no image at {args.image}: run image/build", file=sys.stderr)
        return 1
    return judge(asyncio.run(boot(args.image, args.timeout)), args.keep_log)


if __name__ == "__main__":
    sys.exit(main())
