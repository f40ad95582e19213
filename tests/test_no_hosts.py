"""No registry or mirror host is named in the project: the environment supplies them all.

Setup takes the Go module proxy from `go env GOPROXY`, the image and package chroots take
Debian's mirror from the machine's own apt sources, pip its index from pip's config. A URL
naming any other host than the reserved examples below fails this test.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://([A-Za-z0-9.-]+)")
# Loopback, reserved example and test names (RFC 2606, and `.internal`), one vendor's
# sign-up page that an error message points a user at, and the hosted voice platforms'
# API hosts as their own documents give them (../shared/seeds): what the backend calls
# when a fleet chooses that platform, never where the project fetches software from.
PLATFORM_HOSTS = (
    r"api\.call2me\.app|api\.vatel\.ai|(api|voice)\.thinnest\.ai|"
    r"assistant-api\.hmsovereign\.com"
)
ALLOWED = re.compile(
    r"^(localhost|127\.0\.0\.1|0\.0\.0\.0|10\.0\.2\.\d+|"
    r"([a-z0-9-]+\.)*(example|invalid|test|localhost|internal)|"
    r"([a-z0-9-]+\.)*example\.(org|com|net)|console\.picovoice\.ai|" + PLATFORM_HOSTS + r")$"
)


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:  # not a git checkout
        pytest.skip(f"git ls-files failed: {exc}")
    return [ROOT / name for name in out.decode().split("\0") if name]


def hosts_named(text: str) -> set[str]:
    """Every host of a URL in `text` that is not loopback or a reserved example."""
    hosts = {m.group(1).lower().rstrip(".") for m in URL.finditer(text)}
    # A name with a dot and a top-level domain; single labels are users or compose names.
    return {h for h in hosts if re.search(r"\.[a-z]{2,}$", h) and not ALLOWED.match(h)}


def test_the_check_finds_a_registry_url() -> None:
    host = "mirror.somewhere" + ".net"  # split, so this file does not name it itself
    assert hosts_named(f"curl https://{host}/x") == {host}
    assert hosts_named("url = 'https://provisioning.example.org'") == set()
    assert hosts_named("postgresql://kiosk@/db http://backend:8080") == set()


def test_no_file_names_a_host() -> None:
    found: dict[str, set[str]] = {}
    for path in _tracked_files():
        if not path.is_file():
            continue  # deleted in the work tree
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hosts = hosts_named(text)
        if hosts:
            found[str(path.relative_to(ROOT))] = hosts
    assert found == {}
