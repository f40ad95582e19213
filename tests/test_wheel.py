"""The wheel, built from a clean copy of the checkout: the device and the backend, not demo/."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "provisioning" / "web" / "vendor"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    # A copy of what git would archive (tracked and new files, not ignored ones): an in-tree
    # build reuses build/lib, which keeps whatever an older configuration put there.
    src = tmp_path_factory.mktemp("src")
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if name.startswith("tests/") or not (ROOT / name).is_file():
            continue
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    if VENDOR.is_dir():  # scripts/build-web's output, as packaging/build provides it
        shutil.copytree(VENDOR, src / "provisioning" / "web" / "vendor")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(src)],
        check=True,
        timeout=300,
    )
    (path,) = out.glob("kiosk_voice-*.whl")
    return zipfile.ZipFile(path)


def test_demo_is_not_in_the_wheel(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    assert [n for n in names if n.startswith("demo/")] == []
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"appliance", "provisioning"}
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert wheel.read(top_level).decode().split() == ["appliance", "provisioning"]
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "demo" not in wheel.read(entry_points).decode()


def test_nothing_in_the_wheel_imports_demo(wheel: zipfile.ZipFile) -> None:
    importing = re.compile(rb"^\s*(from demo[ .]|import demo\b)", re.MULTILINE)
    assert [
        n for n in wheel.namelist() if n.endswith(".py") and importing.search(wheel.read(n))
    ] == []
    assert "appliance/triggers/simulated.py" in wheel.namelist()  # the simulated board ships


def test_the_operator_page_and_its_vendored_client_are_in_the_wheel(
    wheel: zipfile.ZipFile,
) -> None:
    names = set(wheel.namelist())
    assert {"provisioning/web/operator.html", "provisioning/web/operator.js"} <= names
    if not VENDOR.is_dir():
        pytest.skip("scripts/build-web has not vendored the LiveKit client in this checkout")
    for part in ("livekit-client.umd.js", "livekit-client.LICENSE", "livekit-client.version"):
        assert f"provisioning/web/vendor/{part}" in names
        assert wheel.read(f"provisioning/web/vendor/{part}") == (VENDOR / part).read_bytes()
