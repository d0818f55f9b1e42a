"""The ``sla-daemon`` command line."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

import click

from . import db
from .config import Settings, SettingsError, load_settings
from .logs import setup_logging

EX_CONFIG = 78  # sysexits.h: configuration error
EX_UNAVAILABLE = 69

T = TypeVar("T")

log = logging.getLogger("sla_daemon")


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"sla-daemon: {message}", err=True)
    sys.exit(code)


def _settings(ctx: click.Context) -> Settings:
    try:
        settings: Settings = load_settings(ctx.obj.get("env_file"))
    except SettingsError as exc:
        _fail(str(exc), EX_CONFIG)
    setup_logging(settings.log_level, settings.log_format)
    return settings


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.run(coro)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--env-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Read settings from this file too (KEY=value lines; the environment wins).",
)
@click.version_option(package_name="sla-daemon")
@click.pass_context
def main(ctx: click.Context, env_file: str | None) -> None:
    """SLA deadlines, escalation and WhatsApp status notifications for service-desk tickets."""
    ctx.ensure_object(dict)
    ctx.obj["env_file"] = env_file
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@main.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or update sla-daemon's schema in DATABASE_URL (safe to run again)."""
    settings = _settings(ctx)
    if not settings.database_url:
        _fail("DATABASE_URL is not set", EX_CONFIG)

    async def go() -> list[db.Migration]:
        assert settings.database_url
        conn = await db.connect(settings.database_url)
        try:
            return await db.migrate(conn)
        finally:
            await conn.close()

    try:
        applied = _run(go())
    except (OSError, db.MigrationError) as exc:
        _fail(f"migration failed: {exc}", EX_UNAVAILABLE)
    except Exception as exc:  # asyncpg's connection errors are varied
        _fail(f"migration failed: {type(exc).__name__}: {exc}", EX_UNAVAILABLE)
    if applied:
        click.echo("applied: " + ", ".join(f"{m.version:04d}_{m.name}" for m in applied))
    else:
        click.echo("schema is up to date")


@main.command()
@click.option("--migrate", "apply_migrations", is_flag=True, help="Apply pending migrations first.")
@click.pass_context
def run(ctx: click.Context, apply_migrations: bool) -> None:
    """Run the daemon: send status notifications, escalate breached tickets, warn."""
    from .daemon import Daemon, DaemonError

    settings = _settings(ctx)
    if not settings.database_url:
        _fail("DATABASE_URL is not set", EX_CONFIG)

    async def go() -> int:
        assert settings.database_url
        if apply_migrations:
            conn = await db.connect(settings.database_url)
            try:
                await db.migrate(conn)
            finally:
                await conn.close()
        return await Daemon(settings).run()

    try:
        code = _run(go())
    except DaemonError as exc:
        _fail(str(exc), EX_UNAVAILABLE)
    except db.MigrationError as exc:
        _fail(str(exc), EX_UNAVAILABLE)
    sys.exit(code)
