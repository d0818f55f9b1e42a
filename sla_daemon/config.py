"""Settings, read once from the environment, an optional env file and systemd credentials.

The database and Twilio variables keep the names operators already use
(``DATABASE_URL``, ``TWILIO_*``); everything else is ``SLA_DAEMON_*``.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "SettingsError", "env_name", "load_settings", "split_host_port"]

#: A claimed row is POSTed only while its lease has at least this much left.
LEASE_MARGIN_SECONDS = 5.0


class SettingsError(Exception):
    """An invalid setting: the message names it, and the CLI exits with EX_CONFIG (78)."""


class Settings(BaseSettings):
    """Everything the daemon can be told; defaults suit a small municipality."""

    model_config = SettingsConfigDict(
        env_prefix="SLA_DAEMON_",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    # --- database -------------------------------------------------------------
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "SLA_DAEMON_DATABASE_URL")
    )
    pool_min_size: int = Field(default=2, ge=1, le=100)
    pool_max_size: int = Field(default=10, ge=1, le=200)

    # --- Twilio -------------------------------------------------------------------
    twilio_account_sid: str | None = Field(default=None, validation_alias="TWILIO_ACCOUNT_SID")
    twilio_auth_token: SecretStr | None = Field(default=None, validation_alias="TWILIO_AUTH_TOKEN")
    twilio_whatsapp_number: str | None = Field(
        default=None, validation_alias="TWILIO_WHATSAPP_NUMBER"
    )
    twilio_api_base_url: str = Field(
        default="https://api.twilio.com", validation_alias="TWILIO_API_BASE_URL"
    )
    #: Content API templates, keyed "status:language" (or "escalation:language") -> content SID.
    twilio_content_sids: dict[str, str] = Field(default_factory=dict)
    dry_run: bool = False
    default_region: str = "ZA"

    # --- sending ------------------------------------------------------------------
    send_concurrency: int = Field(default=32, ge=1, le=1000)
    send_rate_per_second: float = Field(default=80.0, gt=0)
    send_timeout_seconds: float = Field(default=10.0, gt=0)

    # --- outbox -------------------------------------------------------------------
    outbox_batch_size: int = Field(default=200, ge=1, le=10_000)
    outbox_lease_seconds: float = Field(default=60.0, gt=0)
    outbox_poll_seconds: float = Field(default=1.0, gt=0)
    max_attempts: int = Field(default=12, ge=1)
    #: Finished (sent, superseded, dry-run) outbox rows are deleted after this; 0 keeps all.
    outbox_retention_days: float = Field(default=30.0, ge=0)
    retry_base_seconds: float = Field(default=2.0, gt=0)
    retry_max_seconds: float = Field(default=900.0, gt=0)

    # --- SLA timer ----------------------------------------------------------------
    safety_interval_seconds: float = Field(default=60.0, gt=0)
    escalation_concurrency: int = Field(default=4, ge=1, le=64)
    breach_batch_size: int = Field(default=500, ge=1)

    # --- listener -----------------------------------------------------------------
    health_interval_seconds: float = Field(default=5.0, gt=0)
    health_timeout_seconds: float = Field(default=2.0, gt=0)
    reconnect_max_seconds: float = Field(default=30.0, gt=0)

    # --- process ------------------------------------------------------------------
    shutdown_grace_seconds: float = Field(default=10.0, gt=0)
    #: A loop failing this long, without a break, makes the daemon unhealthy.
    unhealthy_after_seconds: float = Field(default=30.0, gt=0)
    metrics_address: str = "127.0.0.1:9108"
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: Unique per process start (host:pid repeats across container restarts).
    worker_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    )

    @field_validator("twilio_whatsapp_number")
    @classmethod
    def _strip_whatsapp_prefix(cls, value: str | None) -> str | None:
        """Operators write both ``+14155238886`` and ``whatsapp:+14155238886``."""
        if value is None or not value.strip():
            return None
        value = value.strip()
        if value.lower().startswith("whatsapp:"):
            value = value[len("whatsapp:") :].strip()
        if not value.startswith("+") or not value[1:].isdigit() or not 8 <= len(value) <= 16:
            raise ValueError(
                "must be an E.164 number such as +14155238886 (whatsapp: prefix allowed)"
            )
        return value

    @field_validator("twilio_api_base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("postgres://", "postgresql://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("metrics_address")
    @classmethod
    def _metrics_address(cls, value: str) -> str:
        if value in ("", "off", "none"):
            return ""
        split_host_port(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        """Settings each valid alone that cannot work together (see ``pool_needed``)."""
        if self.pool_min_size > self.pool_max_size:
            raise _conflict(
                f"SLA_DAEMON_POOL_MIN_SIZE ({self.pool_min_size}) is larger than"
                f" SLA_DAEMON_POOL_MAX_SIZE ({self.pool_max_size})"
            )
        if self.pool_max_size < self.pool_needed:
            raise _conflict(
                f"SLA_DAEMON_POOL_MAX_SIZE ({self.pool_max_size}) must be at least"
                f" SLA_DAEMON_ESCALATION_CONCURRENCY + 3 ({self.pool_needed}): the breach"
                " sweep holds its cursor and one connection per escalation, while the"
                " sender and the health check need one each"
            )
        if self.outbox_lease_seconds <= self.send_timeout_seconds + LEASE_MARGIN_SECONDS:
            raise _conflict(
                f"SLA_DAEMON_OUTBOX_LEASE_SECONDS ({self.outbox_lease_seconds:g}) must exceed"
                f" SLA_DAEMON_SEND_TIMEOUT_SECONDS ({self.send_timeout_seconds:g}) +"
                f" {LEASE_MARGIN_SECONDS:g}: a send may never outlive its row's lease"
            )
        return self

    @property
    def pool_needed(self) -> int:
        """Pool connections the loops hold at once at worst.

        The timer's breach sweep keeps a cursor open (one connection) while it runs up
        to ``escalation_concurrency`` escalations (one each); the sender must still
        claim and record, and the health check must get one within its timeout, or a
        long sweep starves them (with a pool of 1 the sweep deadlocks on itself)."""
        return self.escalation_concurrency + 3

    @property
    def twilio_configured(self) -> bool:
        """True when every Twilio credential is present; otherwise the daemon runs dry."""
        return bool(
            self.twilio_account_sid and self.twilio_auth_token and self.twilio_whatsapp_number
        )

    @property
    def effective_dry_run(self) -> bool:
        return self.dry_run or not self.twilio_configured


def _conflict(message: str) -> PydanticCustomError:
    return PydanticCustomError("settings_conflict", message)


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` as (host, port); ValueError names what is wrong."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be host:port (port 0 picks a free one), [ipv6]:port, or 'off'")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"{host!r}: an IPv6 address is written [address]:port")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets: [{host}]:{port}")
    return host or "127.0.0.1", int(port)


def load_settings(env_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings, turning pydantic's errors into one readable line per bad setting."""
    secrets_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    try:
        return Settings(  # type: ignore[call-arg]
            _env_file=env_file,
            _secrets_dir=secrets_dir if secrets_dir and Path(secrets_dir).is_dir() else None,
            **overrides,
        )
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = env_name(str(error["loc"][0])) if error["loc"] else "settings"
            lines.append(f"{name}: {error['msg']}")
        raise SettingsError("invalid setting: " + "; ".join(lines)) from None


_UNPREFIXED = {
    "database_url": "DATABASE_URL",
    "twilio_account_sid": "TWILIO_ACCOUNT_SID",
    "twilio_auth_token": "TWILIO_AUTH_TOKEN",
    "twilio_whatsapp_number": "TWILIO_WHATSAPP_NUMBER",
    "twilio_api_base_url": "TWILIO_API_BASE_URL",
}


def env_name(field: str) -> str:
    """The environment variable an operator sets for ``field``."""
    if field.isupper():
        return field
    return _UNPREFIXED.get(field, f"SLA_DAEMON_{field.upper()}")
