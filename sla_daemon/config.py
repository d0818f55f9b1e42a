"""Settings, read once from the environment, an optional env file and systemd credentials.

The database and Twilio variables keep the names operators already use
(``DATABASE_URL``, ``TWILIO_*``); everything else is ``SLA_DAEMON_*``.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "SettingsError", "env_name", "load_settings"]


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
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be host:port (port 0 picks a free one), or 'off'")
        return value

    @property
    def twilio_configured(self) -> bool:
        """True when every Twilio credential is present; otherwise the daemon runs dry."""
        return bool(
            self.twilio_account_sid and self.twilio_auth_token and self.twilio_whatsapp_number
        )

    @property
    def effective_dry_run(self) -> bool:
        return self.dry_run or not self.twilio_configured


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
