"""systemd notifications through systemd-python's real notify, read from a bound socket."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.state import State, StateChange
from appliance.status.systemd import SystemdNotifier, default_notify

pytestmark = pytest.mark.integration


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_ready_once_start_up_is_over_even_into_a_fault(notify_socket: socket.socket) -> None:
    notifier = SystemdNotifier(default_notify())
    notifier(StateChange(State.STARTING, State.BACKEND_UNREACHABLE))
    notifier(StateChange(State.BACKEND_UNREACHABLE, State.READY))
    notifier(StateChange(State.READY, State.STOPPING))
    got = [notify_socket.recv(4096).decode() for _ in range(3)]
    assert got == [
        "READY=1\nSTATUS=backend_unreachable",
        "STATUS=ready",
        "STOPPING=1\nSTATUS=stopping",
    ]
