"""CPU seconds from /proc, shared by the benchmarks: per process, the machine, the server.

CPU per unit of work, unlike throughput, hardly moves when other work shares the
machine, so the benchmarks report both.
"""

from __future__ import annotations

import os

__all__ = ["cpu_seconds", "machine_busy_seconds", "postgres_cpu"]

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime+stime of a process (plus its reaped children's when asked)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    total = int(fields[11]) + int(fields[12])
    if children:
        total += int(fields[13]) + int(fields[14])
    return total / _TICK


def machine_busy_seconds() -> float:
    """Non-idle CPU seconds of the whole machine, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    steal_guest = sum(fields[7:]) if len(fields) > 7 else 0  # steal, guest (in user)
    return (sum(fields) - idle - steal_guest) / _TICK


def postgres_cpu(postmaster: int | None) -> float:
    """CPU of the whole server: the postmaster, its reaped children and its live ones."""
    if postmaster is None:
        return 0.0
    total = cpu_seconds(postmaster, children=True)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / _TICK
    return total
