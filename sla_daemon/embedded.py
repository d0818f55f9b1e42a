"""A private PostgreSQL for the demo, tests and benchmarks, where none is configured.

It uses the ``pgserver`` wheel (PostgreSQL 16 binaries on PyPI), which also works as
root by running the server as its own system user. The server listens on a Unix
socket only, inside its data folder, and is stopped by its postmaster PID.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = [
    "EmbeddedPostgres",
    "embedded_postgres",
    "kill_pid",
    "postmaster_pid",
    "process_alive",
    "start_embedded",
]

log = logging.getLogger(__name__)

# Durability is not what a throwaway test server is for.
FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


@dataclass
class EmbeddedPostgres:
    """A running embedded server; ``stop()`` ends it and removes what it created."""

    data_dir: Path
    socket_dir: Path
    server: Any
    remove_data: bool

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={quote(str(self.socket_dir))}"

    @property
    def pid(self) -> int | None:
        pid: int | None = self.server.get_pid()
        return pid

    def psql(self, sql: str) -> str:
        out: str = self.server.psql(sql)
        return out

    def stop(self) -> None:
        """Stop through pg_ctl (it signals the postmaster's PID), then make sure by PID."""
        pid = self.pid
        with contextlib.suppress(Exception):
            self.server.cleanup()
        if pid is not None and process_alive(pid):
            kill_pid(pid)
        if self.remove_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (ended, not yet reaped) does not count."""
    if pid <= 1:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # kill(0) found it; /proc cannot say more


def kill_pid(pid: int) -> None:
    """SIGQUIT (PostgreSQL's immediate shutdown), then SIGKILL if it lingers; bounded."""
    for sig, wait in ((signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and process_alive(pid):
            time.sleep(0.05)
        if not process_alive(pid):
            return


def postmaster_pid(data_dir: Path) -> int | None:
    """The PID in ``postmaster.pid``, for a server whose start was interrupted.

    initdb's single-user backend writes its PID negated; never pass a negative PID to
    kill(), which would signal a whole process group.
    """
    try:
        first = (data_dir / "postmaster.pid").read_text(encoding="ascii").split("\n", 1)[0]
        pid = abs(int(first))
    except (OSError, ValueError):
        return None
    return pid if pid > 1 else None


def start_embedded(
    data_dir: Path | None = None, *, fast: bool = True, settings: dict[str, str] | None = None
) -> EmbeddedPostgres:
    """Start (or reuse) a server in ``data_dir``; a temporary one is removed at stop."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            from pgserver import get_server  # type: ignore[attr-defined]
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "no DATABASE_URL is set and the embedded PostgreSQL is not installed: "
            "pip install 'sla-daemon[embedded]'"
        ) from exc
    logging.getLogger("pgserver").setLevel(logging.CRITICAL)
    remove = data_dir is None
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="sla-daemon-pg-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="delete" if remove else "stop")
    socket_dir = Path(server.get_postmaster_info().socket_dir)
    pg = EmbeddedPostgres(
        data_dir=data_dir, socket_dir=socket_dir, server=server, remove_data=remove
    )
    wanted = dict(FAST_SETTINGS) if fast else {}
    wanted.update(settings or {})
    if wanted:
        statements = "".join(f"ALTER SYSTEM SET {k} = '{v}';" for k, v in wanted.items())
        pg.psql(statements + "SELECT pg_reload_conf();")
    return pg


@contextlib.contextmanager
def embedded_postgres(
    data_dir: Path | None = None, *, fast: bool = True
) -> Iterator[EmbeddedPostgres]:
    pg = start_embedded(data_dir, fast=fast)
    try:
        yield pg
    finally:
        pg.stop()
