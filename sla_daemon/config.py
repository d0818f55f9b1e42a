"""Settings, read once from the environment, an optional env file and systemd credentials.

The database and Twilio variables keep the names operators already use
(``DATABASE_URL``, ``TWILIO_*``); everything else is ``SLA_DAEMON_*``.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

import phonenumbers
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
from pydantic_settings import SettingsError as PydanticSettingsError

__all__ = [
    "LEASE_MARGIN_SECONDS",
    "Settings",
    "SettingsError",
    "check_database_url",
    "env_name",
    "load_settings",
    "redact_url",
    "split_host_port",
    "unknown_variables",
]

#: A claimed row is POSTed only while its lease has at least this much left.
LEASE_MARGIN_SECONDS = 5.0

#: Twilio's default opt-out words, with isiZulu (YEKA, MISA: stop) and Afrikaans
#: (STAAK: stop, KANSELLEER: cancel) equivalents.
DEFAULT_OPT_OUT = (
    "STOP", "UNSUBSCRIBE", "END", "QUIT", "STOPALL", "REVOKE", "OPTOUT", "CANCEL",
    "YEKA", "MISA", "STAAK", "KANSELLEER",
)  # fmt: skip
#: Twilio's default opt-in words, with isiZulu (QALA: start) and Afrikaans (BEGIN).
DEFAULT_OPT_IN = ("START", "UNSTOP", "YES", "QALA", "BEGIN")
#: Phrases that, in a reply to the "resolved" message, say the problem is not fixed.
#: The isiZulu and Afrikaans ones await a native speaker's check (README, "Replies").
DEFAULT_NOT_FIXED = {
    "en": ["not fixed", "still broken", "not resolved", "still not working", "not working",
           "nothing was done", "still leaking"],
    "zu": ["akulungisiwe", "akukalungiswa", "kusaphukile", "akusebenzi", "akukasebenzi"],
    "af": ["nie reggemaak nie", "nog stukkend", "werk nog nie", "werk nie", "nie opgelos nie"],
}  # fmt: skip


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
    #: Validated by :func:`check_database_url`; shown only through :func:`redact_url`.
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "SLA_DAEMON_DATABASE_URL"),
        repr=False,
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
    #: Content API templates, keyed "status:language" (or "escalation:language",
    #: "staff_escalation:language", ...) -> content SID.
    twilio_content_sids: dict[str, str] = Field(default_factory=dict)
    dry_run: bool = False
    default_region: str = "ZA"
    twilio_content_base_url: str = Field(
        default="https://content.twilio.com", validation_alias="TWILIO_CONTENT_BASE_URL"
    )

    # --- webhooks and the conversation (sla_daemon.webhooks, sla_daemon.conversation) ---
    #: Where Twilio's status callbacks and inbound messages are served; "" (off) by default.
    webhook_address: str = ""
    #: The URL Twilio calls (and signs), e.g. https://desk.example.org/sla-daemon; the
    #: reverse proxy maps it to webhook_address.
    webhook_public_url: str | None = None
    webhook_max_body_bytes: int = Field(default=16_384, ge=1024, le=1_048_576)
    #: Single-word keywords (any case) that opt a number out of messages, and back in.
    opt_out_keywords: list[str] = Field(default_factory=lambda: list(DEFAULT_OPT_OUT))
    opt_in_keywords: list[str] = Field(default_factory=lambda: list(DEFAULT_OPT_IN))
    #: Sensitive (GBV) tickets: "none" sends nothing; "neutral" a text with no detail.
    sensitive_messages: Literal["none", "neutral"] = "none"
    #: Phrases per language (any case, whole words) that, in a reply to the "resolved"
    #: message, say the problem is not fixed; every language's are matched.
    not_fixed_keywords: dict[str, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_NOT_FIXED.items()}
    )
    #: Such a reply: "record" (for staff to decide) or "reopen" (the ticket goes back to
    #: open). Recording is the default: a keyword match on free text can be wrong, and a
    #: reopen texts the citizen, restarts the SLA clock and can escalate a team's work.
    not_fixed_action: Literal["record", "reopen"] = "record"
    #: Reconciliation: a sent message with no final delivery state this long after it
    #: was sent is looked up through Twilio's API (0: never; only with webhooks on).
    reconcile_after_seconds: float = Field(default=3600.0, ge=0)
    reconcile_interval_seconds: float = Field(default=60.0, gt=0)
    #: Lookups per pass at most, and per second at most.
    reconcile_batch_size: int = Field(default=100, ge=1, le=10_000)
    reconcile_rate_per_second: float = Field(default=2.0, gt=0, le=100)

    # --- sending ------------------------------------------------------------------
    send_concurrency: int = Field(default=32, ge=1, le=1000)
    send_rate_per_second: float = Field(default=80.0, gt=0)
    send_timeout_seconds: float = Field(default=10.0, gt=0)
    #: While Twilio refuses the credentials, one message is sent this often as a probe.
    twilio_probe_seconds: float = Field(default=30.0, gt=0)
    #: Longest Twilio-wide pause after a rate limit (Retry-After or backoff).
    twilio_backoff_max_seconds: float = Field(default=60.0, gt=0)

    # --- outbox -------------------------------------------------------------------
    outbox_batch_size: int = Field(default=200, ge=1, le=10_000)
    outbox_lease_seconds: float = Field(default=60.0, gt=0)
    outbox_poll_seconds: float = Field(default=1.0, gt=0)
    max_attempts: int = Field(default=12, ge=1)
    #: Finished (sent, superseded, dry-run) outbox rows are deleted after this; 0 keeps all.
    outbox_retention_days: float = Field(default=30.0, ge=0)
    #: Warning and escalation events are deleted after this (those of tickets still open
    #: or in progress stay: they mark a warning as given); 0 keeps all.
    event_retention_days: float = Field(default=365.0, ge=0)
    retry_base_seconds: float = Field(default=2.0, gt=0)
    retry_max_seconds: float = Field(default=900.0, gt=0)

    #: ``sla-daemon adopt``: what becomes of a ticket adopted already past a deadline:
    #: escalated by the daemon's next pass, or the breach recorded without escalating.
    adopt_breached: Literal["escalate", "record"] = "escalate"

    # --- SLA timer ----------------------------------------------------------------
    safety_interval_seconds: float = Field(default=60.0, gt=0)
    escalation_concurrency: int = Field(default=4, ge=1, le=64)
    #: Tickets escalated per transaction, each under its own lock, re-check and
    #: subtransaction (one commit for many: the sweep of thousands is WAL-bound).
    escalation_batch_size: int = Field(default=20, ge=1, le=1000)
    breach_batch_size: int = Field(default=500, ge=1)
    #: Each SLA warning also goes to the ticket's team manager as a WhatsApp staff alert
    #: (issue 12); off by default: the warning is otherwise an event and a log line.
    warn_team_manager: bool = False

    # --- listener -----------------------------------------------------------------
    health_interval_seconds: float = Field(default=5.0, gt=0)
    health_timeout_seconds: float = Field(default=2.0, gt=0)
    #: Longest wait between reconnect attempts: short, so the daemon is healthy again
    #: within seconds of the database's return (well inside WatchdogSec=30).
    reconnect_max_seconds: float = Field(default=3.0, gt=0, le=10)

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

    @field_validator("twilio_api_base_url", "twilio_content_base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        """https only, but for a fake on this machine: the auth token goes in every request."""
        try:
            parts = urlsplit(value.strip())
            host = parts.hostname
        except ValueError:
            host = None
        if parts.scheme not in ("http", "https") or not host:
            raise ValueError("must be https://host[:port]")
        if parts.scheme == "http" and not _is_loopback(host):
            raise ValueError(
                "must be https:// (over http:// the auth token would cross the network in "
                "clear); http:// is allowed only for a loopback host: 127.0.0.1, ::1, localhost"
            )
        return value.strip().rstrip("/")

    @field_validator("default_region")
    @classmethod
    def _default_region(cls, value: str) -> str:
        """An unknown region would make every number stored without a country code dead."""
        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(
                f"{value!r} is not a region phonenumbers knows (a two-letter ISO 3166 code"
                " such as ZA)"
            )
        return region

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        check_database_url(value)
        return value

    @field_validator("webhook_public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        """What Twilio signs: https, but for a loopback host (tests, a local proxy)."""
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.query or parts.fragment or not parts.hostname:
            raise ValueError("must be a URL like https://desk.example.org/sla-daemon")
        loopback_http = parts.scheme == "http" and _is_loopback(parts.hostname)
        if parts.scheme != "https" and not loopback_http:
            raise ValueError("must be https:// (TLS at the proxy); http:// only for loopback")
        return value

    @field_validator("opt_out_keywords", "opt_in_keywords")
    @classmethod
    def _keywords(cls, value: list[str]) -> list[str]:
        words = [w.strip().upper() for w in value if w.strip()]
        if any(len(w.split()) != 1 for w in words):
            raise ValueError("keywords are single words")
        return words

    @field_validator("not_fixed_keywords")
    @classmethod
    def _phrases(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        """Lower case, single spaces; an empty phrase would match every reply."""
        phrases = {
            lang.strip().lower(): [" ".join(p.lower().split()) for p in words]
            for lang, words in value.items()
        }
        if any(not p for words in phrases.values() for p in words):
            raise ValueError("a phrase is empty")
        return phrases

    @field_validator("webhook_address", "metrics_address")
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
        if self.webhook_address and not (self.webhook_public_url and self.twilio_auth_token):
            raise _conflict(
                "SLA_DAEMON_WEBHOOK_ADDRESS needs SLA_DAEMON_WEBHOOK_PUBLIC_URL (the URL"
                " Twilio calls and signs) and TWILIO_AUTH_TOKEN (to check the signatures)"
            )
        if set(self.opt_out_keywords) & set(self.opt_in_keywords):
            raise _conflict("SLA_DAEMON_OPT_OUT_KEYWORDS and SLA_DAEMON_OPT_IN_KEYWORDS overlap")
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

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """The usual fields, and the database URL with its password masked."""
        yield from super().__repr_args__()
        if self.database_url is not None:
            yield "database_url", redact_url(self.database_url)

    @property
    def twilio_configured(self) -> bool:
        """True when every Twilio credential is present; otherwise the daemon runs dry."""
        return bool(
            self.twilio_account_sid and self.twilio_auth_token and self.twilio_whatsapp_number
        )

    @property
    def twilio_partial(self) -> bool:
        """Some Twilio credentials but not all: refused, never a silent dry run."""
        given = (self.twilio_account_sid, self.twilio_auth_token, self.twilio_whatsapp_number)
        return any(given) and not all(given)

    @property
    def effective_dry_run(self) -> bool:
        return self.dry_run or not self.twilio_configured

    @property
    def webhooks_on(self) -> bool:
        """Twilio reports deliveries and inbound messages to us (so the window is known)."""
        return bool(self.webhook_address and self.webhook_public_url)


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
    except PydanticSettingsError as exc:
        # A complex field (JSON) that does not parse fails before validation; the message
        # names the field, its cause may quote the value: only the name is used.
        field = re.search(r'field "(\w+)"', str(exc))
        name = env_name(field.group(1)) if field else "a JSON setting"
        raise SettingsError(
            f'invalid setting: {name}: not valid JSON (e.g. {{"resolved:zu": "HX..."}})'
        ) from None
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = env_name(str(error["loc"][0])) if error["loc"] else "settings"
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"{name}: {message}")
        raise SettingsError("invalid setting: " + "; ".join(lines)) from None


def unknown_variables(
    environ: dict[str, str] | None = None, env_file: str | Path | None = None
) -> list[tuple[str, str | None]]:
    """``SLA_DAEMON_*`` names (environment and env file) that no setting reads, each with
    the closest known name (or None): a misspelt setting is otherwise silently ignored."""
    known = {env_name(name) for name in Settings.model_fields} | {"SLA_DAEMON_DATABASE_URL"}
    names = set(os.environ if environ is None else environ)
    if env_file is not None:
        try:
            lines = Path(env_file).read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            key = line.strip().removeprefix("export ").partition("=")[0].strip()
            names.add(key)
    prefixed = sorted(n for n in names if n.upper().startswith("SLA_DAEMON_"))
    return [
        (name, next(iter(difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.6)), None))
        for name in prefixed
        if name.upper() not in known
    ]


_UNPREFIXED = {
    "database_url": "DATABASE_URL",
    "twilio_account_sid": "TWILIO_ACCOUNT_SID",
    "twilio_auth_token": "TWILIO_AUTH_TOKEN",
    "twilio_whatsapp_number": "TWILIO_WHATSAPP_NUMBER",
    "twilio_api_base_url": "TWILIO_API_BASE_URL",
    "twilio_content_base_url": "TWILIO_CONTENT_BASE_URL",
}


def env_name(field: str) -> str:
    """The environment variable an operator sets for ``field``."""
    if field.isupper():
        return field
    return _UNPREFIXED.get(field, f"SLA_DAEMON_{field.upper()}")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- DATABASE_URL ---------------------------------------------------------------------------
#
# asyncpg splits a URL with urllib and never says which part of it it could not use; its
# errors quote the part (``invalid literal for int() with base 10: '<password start>'``).
# A password holding / # ? or @ cuts the URL in the wrong place, so the password ends up
# as a port, a host, a database name or a query. These checks reject every such cut
# before asyncpg sees the URL, and their messages quote nothing from it.

_PERCENT_ENCODING = (
    "write it as postgresql://user:password@host:port/database?parameter=value, with "
    "these characters in the user name and password percent-encoded: "
    "/ as %2F, # as %23, ? as %3F, @ as %40, : as %3A, % as %25 "
    "(Python: urllib.parse.quote(password, safe=''))"
)
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")
_FILE_PARAMETERS = ("sslrootcert", "sslcert", "sslkey", "sslcrl", "passfile")
_HOSTSPEC = re.compile(r"(?:\[[^\]/]+\]|[^\[\]:/,]+)(?::(\d*))?")


class _Unusable(ValueError):
    """DATABASE_URL is cut in a place that suggests an unencoded character."""


def check_database_url(url: str) -> None:
    """Raise ValueError saying what is wrong with ``url``, in words that never quote it."""
    try:
        _check_database_url(url)
    except _Unusable as exc:
        raise ValueError(f"not a usable postgresql:// URL ({exc}); {_PERCENT_ENCODING}") from None


def _check_database_url(url: str) -> None:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        raise ValueError("must be a postgresql:// URL")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _Unusable("it does not parse as a URL") from None
    if "#" in url:
        raise _Unusable("a '#' ends it early")
    netloc = parts.netloc
    if netloc.count("@") > 1:
        raise _Unusable("it holds more than one '@'")
    if "@" not in netloc and "@" in rest[len(netloc) :]:
        raise _Unusable("an '@' follows a '/' or '?'")
    hostspec = netloc.rpartition("@")[2]
    if hostspec:
        for host in hostspec.split(","):
            match = _HOSTSPEC.fullmatch(host)
            if match is None:
                raise _Unusable("a host is empty or holds a ':' not followed by a port number")
            if match.group(1) and not 0 < int(match.group(1)) < 65536:
                raise _Unusable("a port is not a number from 1 to 65535")
    if "/" in parts.path[1:]:
        raise _Unusable("the database name holds a '/'")
    try:
        query = parse_qs(parts.query, strict_parsing=True) if parts.query else {}
    except ValueError:
        raise _Unusable("the part after '?' is not name=value pairs joined by '&'") from None
    _check_parameters({name: values[-1] for name, values in query.items()})


def _check_parameters(query: dict[str, str]) -> None:
    """The parameters asyncpg would otherwise reject only when it connects."""
    sslmode = query.get("sslmode", "prefer")
    if sslmode not in _SSLMODES:
        raise ValueError(f"sslmode must be one of {', '.join(_SSLMODES)}")
    attrs = query.get("target_session_attrs", "any")
    if attrs not in _SESSION_ATTRS:
        raise ValueError(f"target_session_attrs must be one of {', '.join(_SESSION_ATTRS)}")
    for port in filter(None, query.get("port", "").split(",")):
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("port must be a number from 1 to 65535")
    for name in _FILE_PARAMETERS:
        path = query.get(name)
        if path and not Path(path).expanduser().is_file():
            raise ValueError(f"{name} file {path} does not exist")
    if sslmode.startswith("verify-") and "sslrootcert" not in query:
        default = Path("~/.postgresql/root.crt").expanduser()
        if not os.environ.get("PGSSLROOTCERT") and not default.is_file():
            raise ValueError(
                f"sslmode={sslmode} needs the CA certificate: add sslrootcert=/path/ca.pem"
            )


def redact_url(url: str) -> str:
    """``url`` with its password (before the '@', or ``password=``) shown as ``***``."""
    try:
        check_database_url(url)
    except ValueError:
        return "(DATABASE_URL, unparsable: not shown)"
    parts = urlsplit(url)
    userinfo, at, hostspec = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":***"
    query = "&".join(
        "password=***" if pair.partition("=")[0] == "password" else pair
        for pair in parts.query.split("&")
    )
    netloc = f"{userinfo}{at}{hostspec}"
    return urlunsplit(parts._replace(netloc=netloc, query=query if parts.query else ""))
