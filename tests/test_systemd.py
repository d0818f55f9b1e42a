"""sd_notify against real AF_UNIX datagram sockets, as systemd would listen."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sla_daemon import systemd


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    yield
    systemd.close()


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound in tmp_path, named in NOTIFY_SOCKET."""
    short = None
    if len(str(tmp_path / "notify")) > 100:  # sun_path holds 108 bytes
        short = tempfile.mkdtemp(prefix="sdn")
    path = Path(short or tmp_path) / "notify"
    sock = _receiver(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()
    if short:
        shutil.rmtree(short, ignore_errors=True)


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_arrives(listener: socket.socket) -> None:
    assert systemd.ready() is True
    assert _recv(listener) == "READY=1"


def test_ready_with_status(listener: socket.socket) -> None:
    assert systemd.ready("listening\non db") is True
    assert _recv(listener) == "READY=1\nSTATUS=listening on db"


def test_status_watchdog_stopping_arrive_in_order(listener: socket.socket) -> None:
    assert systemd.status("draining outbox: 3 pending")
    assert systemd.watchdog()
    assert systemd.stopping("shutting down")
    assert _recv(listener) == "STATUS=draining outbox: 3 pending"
    assert _recv(listener) == "WATCHDOG=1"
    assert _recv(listener) == "STOPPING=1\nSTATUS=shutting down"


def test_notify_sends_arbitrary_fields(listener: socket.socket) -> None:
    assert systemd.notify("RELOADING=1", "MONOTONIC_USEC=123")
    assert _recv(listener) == "RELOADING=1\nMONOTONIC_USEC=123"


def test_socket_is_reused(listener: socket.socket) -> None:
    systemd.watchdog()
    first = systemd._sock
    systemd.watchdog()
    assert first is not None and systemd._sock is first
    assert [_recv(listener), _recv(listener)] == ["WATCHDOG=1", "WATCHDOG=1"]


def test_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"sla-daemon-test-{uuid.uuid4().hex}"
    sock = _receiver(b"\0" + name.encode())
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.ready() is True
        assert _recv(sock) == "READY=1"
    finally:
        sock.close()


def test_no_op_without_notify_socket() -> None:
    assert systemd.ready() is False
    assert systemd.watchdog() is False
    assert systemd.status("x") is False
    assert systemd._sock is None  # nothing was opened


def test_unsupported_address_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert systemd.ready() is False


def test_vanished_socket_does_not_raise(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = os.environ["NOTIFY_SOCKET"]
    assert systemd.ready()
    listener.close()
    os.unlink(path)
    assert systemd.watchdog() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "@sla-daemon-nobody-" + uuid.uuid4().hex)
    assert systemd.watchdog() is False


def test_full_receiver_does_not_block(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver that stops reading makes sends fail, never block the event loop."""
    results = [systemd.notify("STATUS=" + "x" * 1024) for _ in range(5000)]
    assert results[0] is True
    assert results[-1] is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("30000000", "other", None),
        ("1000", None, 0.0005),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
        ("30000000", "not-a-pid", None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid == "self":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    elif pid == "other":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    elif pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", pid)
    assert systemd.watchdog_interval() == expected
