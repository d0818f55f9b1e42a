"""``sla-daemon check``: can the daemon run here? One result per check, never a traceback.

Each check returns a frozen :class:`CheckResult`; the command prints one line per
result and exits with :func:`exit_code`: 0 when nothing failed, ``EX_UNAVAILABLE``
(69) when the database cannot be reached or used, else ``EX_CONFIG`` (78) for a
configuration problem (DATABASE_URL missing or malformed, schema not current, a
broken message catalog, half-configured Twilio). Warnings (dry run, no WhatsApp
templates, a migration file edited after it was applied) do not fail the check.

The connection helpers here also serve the other commands, so every one of them
explains a wrong DATABASE_URL the same way: refused, unknown host, bad password,
missing database or role, no answer in time. Messages never contain the password.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from . import db
from .config import Settings
from .messages import CatalogError, MessageCatalog
from .templates import template_keys

__all__ = [
    "EX_CONFIG",
    "EX_UNAVAILABLE",
    "CheckResult",
    "DatabaseUnavailable",
    "check_privileges",
    "connect",
    "describe_target",
    "exit_code",
    "explain_connect_error",
    "missing_grants",
    "run_checks",
]

EX_UNAVAILABLE = 69  # sysexits.h: a service (the database) is unavailable
EX_CONFIG = 78  # sysexits.h: configuration error

#: How long ``check`` (and the other commands) wait for the database by default.
DEFAULT_TIMEOUT = 5.0

Status = Literal["ok", "warn", "FAIL", "skip"]


@dataclass(frozen=True)
class CheckResult:
    """One line of ``sla-daemon check``: what was checked, how it went, and why."""

    name: str
    status: Status
    detail: str
    #: For a FAIL: the exit code it calls for (EX_UNAVAILABLE or EX_CONFIG).
    code: int = 0

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def exit_code(results: Sequence[CheckResult]) -> int:
    """0 when nothing failed; 69 when the database is unavailable; else 78."""
    codes = {r.code or EX_CONFIG for r in results if r.failed}
    if not codes:
        return 0
    return EX_UNAVAILABLE if EX_UNAVAILABLE in codes else EX_CONFIG


class DatabaseUnavailable(Exception):
    """The database named by DATABASE_URL cannot be used; the text says why (no secrets)."""

    def __init__(self, message: str, code: int = EX_UNAVAILABLE) -> None:
        super().__init__(message)
        self.code = code


def describe_target(dsn: str) -> str:
    """``host:port/database as user`` (or the socket folder): never the password."""
    try:
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
        host = query.get("host", [unquote(parts.hostname or "")])[0] or "localhost"
        port = query.get("port", [str(parts.port) if parts.port else "5432"])[0]
        user = query.get("user", [unquote(parts.username or "")])[0]
        database = query.get("dbname", [unquote(parts.path.lstrip("/"))])[0] or user
    except ValueError:
        return "the server in DATABASE_URL"
    where = f"socket {host}" if host.startswith("/") else f"{host}:{port}"
    who = f" as {user}" if user else ""
    return f"{where}, database {database or '(default)'}{who}"


def _scrub_password(text: str, dsn: str) -> str:
    """``text`` without the password of ``dsn`` (from its user part or ``password=``)."""
    try:
        parts = urlsplit(dsn)
        passwords = [parts.password, *parse_qs(parts.query).get("password", [])]
    except ValueError:
        passwords = []
    for password in filter(None, passwords):
        text = text.replace(password, "***").replace(unquote(password), "***")
    return text


def explain_connect_error(exc: BaseException, dsn: str, timeout: float) -> DatabaseUnavailable:
    """Turn whatever asyncpg raised while connecting into one clear line and an exit code."""
    target = describe_target(dsn)
    message: str
    code = EX_UNAVAILABLE
    if isinstance(exc, TimeoutError):
        message = (
            f"no answer within {timeout:g}s from {target} "
            "(wrong host or port, a firewall, or an overloaded server)"
        )
    elif isinstance(exc, socket.gaierror):
        message = f"cannot resolve the host of {target}: {exc.strerror or exc}"
    elif isinstance(exc, ConnectionRefusedError):
        message = f"connection refused by {target}: is PostgreSQL running and listening there?"
    elif isinstance(exc, FileNotFoundError):
        message = f"no PostgreSQL socket at {target}: is the server running?"
    elif isinstance(exc, asyncpg.InvalidPasswordError):
        message = f"{target}: password authentication failed (check the password in DATABASE_URL)"
    elif isinstance(exc, asyncpg.InvalidCatalogNameError):
        message = f"{target}: {exc} (create it, or fix the database name in DATABASE_URL)"
    elif isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        message = f"{target}: {exc} (check the user in DATABASE_URL and pg_hba.conf)"
    elif isinstance(exc, asyncpg.CannotConnectNowError):
        message = f"{target}: the server is not accepting connections yet ({exc})"
    elif isinstance(exc, asyncpg.TooManyConnectionsError):
        message = f"{target}: too many connections ({exc})"
    elif isinstance(exc, asyncpg.PostgresError):
        message = f"{target}: {type(exc).__name__}: {exc}"
    elif isinstance(exc, asyncpg.ClientConfigurationError | ValueError):
        # Not the parser's text: it quotes the piece it could not use, which may be the
        # password's start when an unencoded character cut the URL there.
        message = (
            "DATABASE_URL is not a usable PostgreSQL URL (asyncpg refused it); "
            "percent-encode / # ? @ : % in the user name and password"
        )
        code = EX_CONFIG
    elif isinstance(exc, OSError):
        message = f"cannot connect to {target}: {exc.strerror or exc}"
    else:
        message = f"cannot connect to {target}: {type(exc).__name__}: {exc}"
    return DatabaseUnavailable(_scrub_password(message, dsn), code)


async def connect(
    dsn: str,
    connect_timeout: float = DEFAULT_TIMEOUT,
    *,
    application_name: str = "sla-daemon-cli",
    command_timeout: float | None = db.COMMAND_TIMEOUT,
) -> asyncpg.Connection:
    """A connection within ``connect_timeout`` seconds, or DatabaseUnavailable saying why.

    The application name is not the daemon's ("sla-daemon"), so a command's session
    is never mistaken for a running daemon in ``pg_stat_activity``.
    """
    try:
        async with asyncio.timeout(connect_timeout):
            return await db.connect(
                dsn,
                timeout=connect_timeout,
                command_timeout=command_timeout,
                server_settings={"application_name": application_name},
            )
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # asyncpg's connection errors are many and varied
        raise explain_connect_error(exc, dsn, connect_timeout) from None


async def run_checks(
    settings: Settings,
    *,
    connect_timeout: float = DEFAULT_TIMEOUT,
    catalog_dir: Path | None = None,
) -> list[CheckResult]:
    """Every check, in order: database, schema, catalogs, Twilio (and its templates).

    ``connect_timeout`` bounds the connection and, again, the queries that follow.
    """
    results = await _database_checks(settings, connect_timeout)
    catalog, catalog_result = check_catalogs(catalog_dir)
    results.append(catalog_result)
    results.extend(check_twilio(settings, catalog))
    return results


async def _database_checks(settings: Settings, bound: float) -> list[CheckResult]:
    dsn = settings.database_url
    if not dsn:
        return [
            CheckResult("database", "FAIL", "DATABASE_URL is not set", EX_CONFIG),
            CheckResult("schema", "skip", "no database to look at"),
            CheckResult("privileges", "skip", "no database to look at"),
        ]
    started = time.monotonic()
    try:
        conn = await connect(dsn, bound)
    except DatabaseUnavailable as exc:
        return [
            CheckResult("database", "FAIL", str(exc), exc.code),
            CheckResult("schema", "skip", "the database is not reachable"),
            CheckResult("privileges", "skip", "the database is not reachable"),
        ]
    try:
        async with asyncio.timeout(bound):
            server = await conn.fetchrow(db.QUERIES["check_server"])
            assert server is not None
            elapsed = (time.monotonic() - started) * 1000
            database = CheckResult(
                "database",
                "ok",
                f"PostgreSQL {server['server_version']} at {describe_target(dsn)}"
                f" ({elapsed:.0f} ms)",
            )
            try:
                schema = await check_schema(conn)
            except asyncpg.InsufficientPrivilegeError as exc:
                schema = CheckResult("schema", "skip", f"not readable ({exc}): see privileges")
            privileges = await check_privileges(conn)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        detail = f"connected, then failed: {type(exc).__name__}: {exc}"
        return [
            CheckResult("database", "FAIL", _scrub_password(detail, dsn), EX_UNAVAILABLE),
            CheckResult("schema", "skip", "the database did not answer"),
            CheckResult("privileges", "skip", "the database did not answer"),
        ]
    finally:
        await conn.close(timeout=bound)
    return [database, schema, privileges]


async def check_privileges(conn: asyncpg.Connection) -> CheckResult:
    """The connecting role may do everything the daemon does, or the GRANT to run."""
    if not await conn.fetchval(db.QUERIES["runtime_role_exists"]):
        return CheckResult("privileges", "skip", "no sla_daemon_runtime role yet (migrate first)")
    user = await conn.fetchval("SELECT current_user")
    missing = await conn.fetch(db.QUERIES["check_privileges"])
    if not missing:
        return CheckResult("privileges", "ok", f"role {user} may do everything the daemon does")
    return CheckResult("privileges", "FAIL", missing_grants(str(user), missing), EX_CONFIG)


def missing_grants(user: str, missing: Sequence[asyncpg.Record]) -> str:
    """One line: what ``user`` lacks (a few examples) and the GRANT statement(s) to run."""
    shown = [_privilege(r) for r in missing[:3]]
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    what = f"role {user} lacks {', '.join(shown)}{more}"
    if not missing[0]["member"]:
        return (
            f"{what}: it is not a member of sla_daemon_runtime;"
            f" run GRANT sla_daemon_runtime TO {user}"
        )
    grants: dict[tuple[str, str, str], list[str]] = {}
    for r in missing:
        if r["runtime_has"]:
            continue
        key = (r["kind"], r["object"], r["privilege"])
        grants.setdefault(key, []).extend([r["col"]] if r["col"] else [])
    statements = [_grant(kind, obj, priv, cols) for (kind, obj, priv), cols in grants.items()]
    if not statements:  # the runtime role has them: a REVOKE aimed at this role itself
        return f"{what} (revoked from it directly?): run GRANT sla_daemon_runtime TO {user}"
    return f"{what}, which sla_daemon_runtime lacks too: run {'; '.join(statements)}"


_OBJECT_WORD = {"schema": "SCHEMA ", "sequence": "SEQUENCE ", "function": "FUNCTION "}


def _grant(kind: str, obj: str, privilege: str, columns: list[str]) -> str:
    on = f"{_OBJECT_WORD.get(kind, '')}{obj}"
    listed = f" ({', '.join(columns)})" if columns else ""
    return f"GRANT {privilege}{listed} ON {on} TO sla_daemon_runtime"


def _privilege(r: asyncpg.Record) -> str:
    column = f" ({r['col']})" if r["col"] else ""
    return f"{r['privilege']}{column} on {r['kind']} {r['object']}"


async def check_schema(conn: asyncpg.Connection) -> CheckResult:
    """Current when every migration file is applied; edited or unknown ones are warnings."""
    migrations = db.load_migrations()
    pending = await db.pending_migrations(conn)
    if pending:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in pending)
        what = "migration" if len(pending) == 1 else "migrations"
        return CheckResult(
            "schema",
            "FAIL",
            f"{len(pending)} pending {what}: {names} (run: sla-daemon migrate)",
            EX_CONFIG,
        )
    applied = {r["version"]: r for r in await conn.fetch(db.QUERIES["check_applied_migrations"])}
    files = {m.version: m for m in migrations}
    problems = [
        f"{m.version:04d}_{m.name} was edited after it was applied (not re-applied)"
        for m in migrations
        if applied[m.version]["checksum"] != m.checksum
    ]
    problems += [
        f"{v:04d}_{r['name']} is applied but unknown to this version (a newer sla-daemon?)"
        for v, r in sorted(applied.items())
        if v not in files
    ]
    latest = migrations[-1] if migrations else None
    current = (
        f"current ({len(migrations)} migrations, latest {latest.version:04d}_{latest.name})"
        if latest
        else "current"
    )
    if problems:
        return CheckResult("schema", "warn", f"{current}; " + "; ".join(problems))
    return CheckResult("schema", "ok", current)


def check_catalogs(directory: Path | None = None) -> tuple[MessageCatalog | None, CheckResult]:
    """Every catalog loads and matches English key for key, placeholder for placeholder."""
    try:
        catalog = MessageCatalog.load(directory)
    except CatalogError as exc:
        return None, CheckResult("catalogs", "FAIL", str(exc), EX_CONFIG)
    names = ", ".join(f"{code} ({catalog.names[code]})" for code in catalog.languages)
    return catalog, CheckResult(
        "catalogs", "ok", f"{len(catalog.languages)} languages complete: {names}"
    )


_TWILIO_VARIABLES = ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_WHATSAPP_NUMBER")


def check_twilio(settings: Settings, catalog: MessageCatalog | None) -> list[CheckResult]:
    """Sending for real, or dry run announced; half a Twilio configuration is a failure."""
    values = (
        settings.twilio_account_sid,
        settings.twilio_auth_token,
        settings.twilio_whatsapp_number,
    )
    present = [name for name, value in zip(_TWILIO_VARIABLES, values, strict=True) if value]
    missing = [name for name in _TWILIO_VARIABLES if name not in present]
    if settings.dry_run:
        return [
            CheckResult(
                "twilio",
                "warn",
                "dry run (SLA_DAEMON_DRY_RUN is set): messages are logged, not sent",
            )
        ]
    if not present:
        return [
            CheckResult(
                "twilio",
                "warn",
                f"dry run: {', '.join(missing)} are not set, so messages are logged, not sent",
            )
        ]
    if missing:
        return [
            CheckResult(
                "twilio",
                "FAIL",
                f"{', '.join(missing)} not set while {', '.join(present)} "
                f"{'is' if len(present) == 1 else 'are'}: the daemon would only pretend to send "
                "(set the rest, or SLA_DAEMON_DRY_RUN=true to mean it)",
                EX_CONFIG,
            )
        ]
    sid = settings.twilio_account_sid or ""
    shown = f"{sid[:2]}…{sid[-4:]}" if len(sid) > 8 else "***"
    results = [
        CheckResult(
            "twilio",
            "ok",
            f"sending from whatsapp:{settings.twilio_whatsapp_number} as account {shown}"
            f" via {settings.twilio_api_base_url} (credentials not tried)",
        )
    ]
    results.append(_check_templates(settings, catalog))
    return results


def _check_templates(settings: Settings, catalog: MessageCatalog | None) -> CheckResult:
    """Business-initiated WhatsApp messages outside the 24-hour window need templates."""
    sids = settings.twilio_content_sids
    outside = (
        "outside the 24-hour window they end dead (webhooks on)"
        if settings.webhooks_on
        else "WhatsApp delivers body text only within 24 h of the citizen's last message"
    )
    if not sids:
        return CheckResult(
            "templates",
            "warn",
            f"SLA_DAEMON_TWILIO_CONTENT_SIDS is empty: messages go as body text; {outside}"
            " (sla-daemon templates push creates them)",
        )
    languages = catalog.languages if catalog else ()
    neutral = settings.sensitive_messages == "neutral"
    warn = settings.warn_team_manager
    wanted = set(template_keys(catalog, neutral=neutral, staff_warning=warn)) if catalog else set()
    known = set(template_keys(catalog, neutral=True, staff_warning=True)) if catalog else set()
    unknown = sorted(set(sids) - known) if languages else []
    missing = sorted(wanted - set(sids))
    notes = []
    if unknown:
        notes.append(f"unknown keys {unknown} (expected status:language, e.g. resolved:zu)")
    if missing:
        notes.append(
            f"{len(missing)} of {len(wanted)} without a template: {', '.join(missing)}; {outside}"
        )
    if notes:
        return CheckResult("templates", "warn", "; ".join(notes))
    return CheckResult("templates", "ok", f"{len(sids)} content templates configured")
