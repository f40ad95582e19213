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
import contextlib
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
ROOT_OFFSET_MIB = 4 + 256  # ROOT follows the 256 MiB BOOT partition
JOURNAL_WAIT_S = 480.0
STATE_LINE = re.compile(r"kiosk-appliance\[\d+\]: state \w+ -> (\w+)")


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
    enrolled_s: float | None


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
            # cmd: runs socat for each connection the guest opens; a tcp: chardev would
            # connect once, when qemu starts, and serve one connection only.
            f"guestfwd=tcp:{GUEST_BACKEND[0]}:{GUEST_BACKEND[1]}-cmd:socat - TCP:127.0.0.1:{port}"
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
        enrolled_s = ready_s = None
        database = stack.workdir / "provisioning.sqlite3"
        try:
            while time.monotonic() - powered_on < timeout_s and qemu.returncode is None:
                await asyncio.sleep(1)
                enrolled, held = backend_view(database)
                if enrolled_s is None and enrolled:
                    enrolled_s = time.monotonic() - powered_on
                    print(f"boot-test: enrolled after {enrolled_s:.0f} s")
                if held:
                    # The daemon fetches its held grant right after its first check-in, as it
                    # shows ready: the backend sees ready without a login on the device.
                    ready_s = time.monotonic() - powered_on
                    print(f"boot-test: the daemon holds a grant (ready) after {ready_s:.0f} s")
                    # journald writes its file at its sync interval (5 min): wait until the
                    # card's journal shows the daemon ready, so nothing is judged on a stale card.
                    await wait_for_journal(card, workdir, JOURNAL_WAIT_S)
                    break
        finally:
            if qemu.returncode is None:
                qemu.terminate()
                await qemu.wait()
        devices = await stack.backend.core.list_devices()
    return Outcome(card, console, code, [d.name for d in devices], ready_s, enrolled_s)


def backend_view(database: Path) -> tuple[bool, bool]:
    """(the test device is enrolled, it holds a call grant), read from the backend's SQLite."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT device_id FROM devices WHERE name = 'qemu-kiosk'").fetchone()
            if row is None:
                return False, False
            grants = db.execute("SELECT COUNT(*) FROM grants WHERE device_id = ?", row).fetchone()
            return True, bool(grants[0])
    except sqlite3.Error:
        return False, False


async def wait_for_journal(card: Path, workdir: Path, limit_s: float) -> None:
    """Read the running card's journal every 15 s until it has the daemon's ready line."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        await asyncio.sleep(15)
        journal = await asyncio.to_thread(card_journal, card, workdir)
        if "-> ready" in journal and "Started kiosk-appliance.service" in journal:
            await asyncio.sleep(5)
            return


def card_journal(card: Path, workdir: Path) -> str:
    """The device's journal from the card's ROOT partition (debugfs, journalctl --directory)."""
    root = workdir / "root.ext4"
    subprocess.run(
        ["dd", f"if={card}", f"of={root}", "bs=1M", f"skip={ROOT_OFFSET_MIB}", "status=none"],
        check=True,
        timeout=300,
    )
    out = workdir / "journal"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    subprocess.run(
        ["debugfs", "-R", f"rdump /var/log/journal {out}", str(root)],
        capture_output=True,
        check=True,
        timeout=300,
    )
    return subprocess.run(
        ["journalctl", "-D", str(out / "journal"), "--no-pager", "-o", "short-monotonic"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    ).stdout


def judge(o: Outcome, keep: Path | None) -> int:
    """Check what the boot left behind; print the verdict and the figure."""
    card_text = subprocess.run(
        ["mtype", "-i", f"{o.card}@@{BOOT_OFFSET}", "::kiosk.txt"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    journal = card_journal(o.card, o.card.parent)
    (o.card.parent / "journal.txt").write_text(journal)
    states = STATE_LINE.findall(journal)
    failures = []
    if "qemu-kiosk" not in o.device_names:
        failures.append("the backend has no device qemu-kiosk: it did not enroll")
    if o.code in card_text or o.code in journal:
        failures.append("the enrollment code is still on the card")
    if "# first boot: enrolled as" not in card_text:
        failures.append("kiosk.txt has no 'enrolled' status line")
    if "Started kiosk-appliance.service" not in journal:
        failures.append("the journal has no 'Started kiosk-appliance.service'")
    if not states or states[-1] != "ready":
        failures.append(f"the daemon's last journal state is {states[-1] if states else 'none'}")
    if o.ready_s is None:
        failures.append("the daemon never held a grant (not ready)")
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(o.console, keep / "console.log")
        (keep / "journal.txt").write_text(journal)
    print(f"boot-test: console log {o.console}, journal {o.card.parent / 'journal.txt'}")
    for line in failures:
        print(f"boot-test: FAIL {line}")
    if failures:
        return 1
    ready_line = next(line for line in journal.splitlines() if "-> ready" in line)
    print(f"boot-test: PASS power-on to ready {o.ready_s:.0f} s (enrolled at {o.enrolled_s:.0f} s)")
    print(f"boot-test: journal: {ready_line.strip()}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", type=Path, default=ROOT / "dist" / "kiosk-voice-arm64.img")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait (900)")
    parser.add_argument("--keep-log", type=Path, help="copy the console log to this folder")
    args = parser.parse_args()
    if not args.image.exists():
        print(f"boot-test: no image at {args.image}: run image/build", file=sys.stderr)
        return 1
    outcome = asyncio.run(boot(args.image, args.timeout))
    try:
        return judge(outcome, args.keep_log)
    finally:
        # The card's copy and its ROOT partition are 3.8 GB a run; the logs stay.
        for big in (outcome.card, outcome.card.parent / "root.ext4"):
            big.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
