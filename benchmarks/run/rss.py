"""Peak memory of a daemon process: VmHWM over its whole life, read before it stops."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .processes import DaemonProcess


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS of a process, in kB."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
    return out


def memory(daemon: DaemonProcess) -> dict[str, Any]:
    """The part's daemon: peak and final RSS, and how many errors it logged."""
    peak = daemon.sample_memory()
    return {
        "daemon_peak_rss_mb": round(peak.get("VmHWM", 0) / 1024, 1),
        "daemon_rss_at_end_mb": round(peak.get("VmRSS", 0) / 1024, 1),
        "errors_logged": daemon.errors_logged(),
    }
