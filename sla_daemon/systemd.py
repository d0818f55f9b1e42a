"""A tiny ``sd_notify``: tell systemd we are ready, stopping, alive, and what we are doing.

systemd passes a datagram socket in ``$NOTIFY_SOCKET`` to ``Type=notify`` services: a
filesystem path, or an abstract-namespace name written with a leading ``@``. Each
message is newline-separated ``KEY=value`` fields. Outside systemd (tests, a container,
a terminal) the variable is unset and every call is a no-op returning False.

One non-blocking socket per process is created on first use, so the hot path (the
watchdog ping) is one ``sendto``; it never blocks the event loop and never raises: a
failed send is logged at debug level and reported as False.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

__all__ = [
    "close",
    "notify",
    "ready",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_sock: socket.socket | None = None
_sock_pid = 0


def _address(raw: str) -> str | bytes | None:
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()  # Linux abstract namespace
    if raw.startswith("/"):
        return raw
    return None  # e.g. systemd's "vsock:" addresses, which this does not speak


def _socket() -> socket.socket:
    global _sock, _sock_pid
    with _lock:
        if _sock is None or _sock_pid != os.getpid():  # a forked child gets its own
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            _sock, _sock_pid = sock, os.getpid()
        return _sock


def notify(*fields: str) -> bool:
    """Send ``KEY=value`` fields to systemd; True if the datagram was sent."""
    raw = os.environ.get("NOTIFY_SOCKET")
    if not raw or not fields:
        return False
    address = _address(raw)
    if address is None:
        log.debug("sd_notify: unsupported NOTIFY_SOCKET %r", raw)
        return False
    try:
        _socket().sendto("\n".join(fields).encode(), address)
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", raw, exc)
        return False
    return True


def _status_field(text: str) -> str:
    return "STATUS=" + " ".join(text.split())  # one line: a newline would end the field


def _with_status(field: str, status_text: str | None) -> bool:
    return notify(field, _status_field(status_text)) if status_text else notify(field)


def ready(status_text: str | None = None) -> bool:
    """Startup finished (``READY=1``); systemd starts ordering dependents after it."""
    return _with_status("READY=1", status_text)


def stopping(status_text: str | None = None) -> bool:
    """Shutdown has begun (``STOPPING=1``)."""
    return _with_status("STOPPING=1", status_text)


def status(text: str) -> bool:
    """A one-line status shown by ``systemctl status``."""
    return notify(_status_field(text))


def watchdog() -> bool:
    """Ping the watchdog (``WATCHDOG=1``)."""
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """How often to ping, in seconds (half of ``WatchdogSec=``), or None if not asked to.

    None when ``$WATCHDOG_USEC`` is unset or invalid, or when ``$WATCHDOG_PID`` is set
    and names another process (the variables were inherited, not meant for us).
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    try:
        if pid and int(pid) != os.getpid():
            return None
        value = int(usec)
    except ValueError:
        log.debug("ignoring invalid WATCHDOG_USEC=%r / WATCHDOG_PID=%r", usec, pid)
        return None
    if value <= 0:
        return None
    return value / 2 / 1_000_000


def close() -> None:
    """Close the cached socket (tests; a later call opens a new one)."""
    global _sock
    with _lock:
        if _sock is not None:
            _sock.close()
            _sock = None
