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

__all__ = ["EmbeddedPostgres", "embedded_postgres", "start_embedded"]

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
        if pid is not None and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.remove_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child still answers kill(0); the postmaster is not our child.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


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
