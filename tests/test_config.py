"""Settings from the environment and systemd credentials, and readable errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sla_daemon.config import Settings, SettingsError, load_settings

_VARIABLES = (
    "CREDENTIALS_DIRECTORY",
    "DATABASE_URL",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_WHATSAPP_NUMBER",
    "TWILIO_API_BASE_URL",
    "SLA_DAEMON_DRY_RUN",
    "SLA_DAEMON_SEND_RATE_PER_SECOND",
    "SLA_DAEMON_EVENT_RETENTION_DAYS",
    "PGSSLROOTCERT",
    "SLA_DAEMON_TWILIO_CONTENT_SIDS",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests must not see the developer's or CI's real settings."""
    for name in _VARIABLES:
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.mark.parametrize(
    "value", ["whatsapp:+14155238886", "+14155238886", " WHATSAPP:+14155238886 "]
)
def test_whatsapp_prefix_is_stripped(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("TWILIO_WHATSAPP_NUMBER", value)
    assert load_settings().twilio_whatsapp_number == "+14155238886"


@pytest.mark.parametrize("value", ["0821234567", "whatsapp:", "+1415abc8886", "+1"])
def test_bad_whatsapp_number_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("TWILIO_WHATSAPP_NUMBER", value)
    with pytest.raises(SettingsError, match="TWILIO_WHATSAPP_NUMBER"):
        load_settings()


@pytest.mark.parametrize("value", ["fast", "0", "-5"])
def test_bad_send_rate_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SLA_DAEMON_SEND_RATE_PER_SECOND", value)
    with pytest.raises(SettingsError, match="SLA_DAEMON_SEND_RATE_PER_SECOND"):
        load_settings()


def test_send_rate_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLA_DAEMON_SEND_RATE_PER_SECOND", "12.5")
    assert load_settings().send_rate_per_second == 12.5


def test_secrets_from_credentials_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "TWILIO_AUTH_TOKEN").write_text("token-from-systemd\n", encoding="utf-8")
    (tmp_path / "TWILIO_ACCOUNT_SID").write_text("AC" + "1" * 32, encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("TWILIO_WHATSAPP_NUMBER", "+14155238886")
    settings = load_settings()
    assert settings.twilio_auth_token is not None
    assert settings.twilio_auth_token.get_secret_value() == "token-from-systemd"
    assert settings.twilio_account_sid == "AC" + "1" * 32
    assert "token-from-systemd" not in repr(settings)
    assert settings.twilio_configured
    assert not settings.effective_dry_run


def test_environment_beats_credentials_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "TWILIO_AUTH_TOKEN").write_text("from-file", encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "from-env")
    token = load_settings().twilio_auth_token
    assert token is not None and token.get_secret_value() == "from-env"


def test_missing_credentials_directory_is_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "absent"))
    assert load_settings().twilio_auth_token is None


def test_without_twilio_credentials_it_runs_dry() -> None:
    settings = load_settings()
    assert not settings.twilio_configured
    assert settings.effective_dry_run


def test_field_names_work_as_keywords() -> None:
    """populate_by_name: code and tests can build Settings without the env names."""
    settings = Settings(
        twilio_account_sid="AC" + "2" * 32,
        twilio_auth_token="secret",  # type: ignore[arg-type]
        twilio_whatsapp_number="whatsapp:+14155238886",
        twilio_api_base_url="http://127.0.0.1:9/",
        database_url="postgresql://localhost/x",
        send_rate_per_second=5,
        dry_run=False,
    )
    assert settings.twilio_account_sid == "AC" + "2" * 32
    assert settings.twilio_whatsapp_number == "+14155238886"
    assert settings.twilio_api_base_url == "http://127.0.0.1:9"
    assert settings.database_url == "postgresql://localhost/x"
    assert not settings.effective_dry_run


def test_overrides_errors_name_the_variable() -> None:
    with pytest.raises(SettingsError, match="TWILIO_API_BASE_URL"):
        load_settings(twilio_api_base_url="ftp://example")


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [("127.0.0.1:9108", "127.0.0.1", 9108), ("[::1]:9109", "::1", 9109), (":0", "127.0.0.1", 0)],
)
def test_metrics_address_forms(value: str, host: str, port: int) -> None:
    from sla_daemon.config import split_host_port

    assert Settings(metrics_address=value).metrics_address == value
    assert split_host_port(value) == (host, port)


@pytest.mark.parametrize("value", ["::1:9108", "[::1:9108", "[nohost]:9108", "localhost"])
def test_bad_metrics_address_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("SLA_DAEMON_METRICS_ADDRESS", value)
    with pytest.raises(SettingsError, match="SLA_DAEMON_METRICS_ADDRESS"):
        load_settings()


def test_defaults_fit_together() -> None:
    settings = Settings()
    assert settings.pool_max_size >= settings.pool_needed
    assert settings.outbox_lease_seconds > settings.send_timeout_seconds + 5


@pytest.mark.parametrize(
    "values",
    [
        {"pool_max_size": 1},  # the sweep's cursor would wait forever for an escalation
        {"escalation_concurrency": 8},  # 8 + 3 > the default pool of 10
        {"pool_min_size": 5, "pool_max_size": 4, "escalation_concurrency": 1},
        {"outbox_lease_seconds": 15},  # 10 s send timeout + 5 s margin is not less
    ],
)
def test_settings_that_cannot_work_together_are_refused(values: dict[str, int]) -> None:
    with pytest.raises(SettingsError, match="SLA_DAEMON_"):
        load_settings(**values)


# --- DATABASE_URL: parsed at start-up, never echoed -----------------------------------------

#: A generated password holding every character that breaks a URL; each fragment between
#: them is distinctive, so finding any of them in a message is a leak.
PASSWORD = "Qz7x/Vk9t#Wp4j?Rh2y@Bn5m"
FRAGMENTS = ("Qz7x", "Vk9t", "Wp4j", "Rh2y", "Bn5m")


def asyncpg_parameters(url: str) -> Any:
    """What asyncpg's own URL parser (the one connect() uses) makes of ``url``."""
    from asyncpg.connect_utils import _parse_connect_dsn_and_args

    _addresses, parameters = _parse_connect_dsn_and_args(
        dsn=url, host=None, port=None, user=None, password=None, passfile=None,
        database=None, ssl=None, service=None, servicefile=None, direct_tls=None,
        server_settings=None, target_session_attrs=None, krbsrvname=None, gsslib=None,
    )  # fmt: skip
    return parameters


def leaks(text: str, fragments: tuple[str, ...] = FRAGMENTS) -> list[str]:
    return [f for f in fragments if f in text]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://sla:s3cret@db.example:5432/platform",
        "postgres://sla@db.example/platform",
        # the password percent-encoded, as the error message tells operators to write it
        "postgresql://sla:Qz7x%2FVk9t%23Wp4j%3FRh2y%40Bn5m@db.example/platform",
        "postgresql://sla:pw@db1.example:5432,db2.example:5433/platform"
        "?target_session_attrs=read-write",
        "postgresql://sla:pw@[::1]:5432/platform",
        "postgresql://postgres@/t_1?host=/tmp/pg%20sock",  # a Unix socket, as the tests use
        "postgresql:///platform?host=%2Fvar%2Frun%2Fpostgresql&user=sla",
        "postgresql://sla:pw@db.example/platform?sslmode=require",
        "postgresql://sla:pw@db.example/platform?sslmode=prefer&application_name=x",
    ],
)
def test_database_url_forms_asyncpg_accepts_are_accepted(url: str) -> None:
    assert load_settings(database_url=url).database_url == url
    asyncpg_parameters(url)  # ...and asyncpg parses them too


def test_verify_full_with_a_root_certificate_is_accepted(tmp_path: Path) -> None:
    """The README's TLS example: the CA file is read and the server's name is checked."""
    ca = tmp_path / "ca.pem"
    ca.write_text(_SELF_SIGNED_CA, encoding="ascii")
    url = f"postgresql://sla:pw@db.example/platform?sslmode=verify-full&sslrootcert={ca}"
    assert load_settings(database_url=url).database_url == url
    context = asyncpg_parameters(url).ssl
    assert context.check_hostname and context.verify_mode.name == "CERT_REQUIRED"
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "sla-test-ca"),),)]


def test_a_missing_root_certificate_is_a_configuration_error(tmp_path: Path) -> None:
    url = f"postgresql://sla:pw@db.example/p?sslmode=verify-full&sslrootcert={tmp_path}/no.pem"
    with pytest.raises(SettingsError, match=r"DATABASE_URL: sslrootcert file .*no\.pem"):
        load_settings(database_url=url)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://sla:{PASSWORD}@db.example:5432/platform",
        "postgresql://sla:Qz7x/Vk9t@db.example/platform",
        "postgresql://sla:1234/Vk9t@db.example/platform",  # the part before / looks like a port
        "postgresql://sla:Qz7x#Vk9t@db.example/platform",
        "postgresql://sla:Qz7x?Vk9t@db.example/platform",
        "postgresql://sla:Qz7x?Vk9t=Wp4j@db.example/platform",
        "postgresql://sla:Qz7x@Vk9t@db.example/platform",
        "postgresql://sla:Qz7x:Vk9t@db.example:Wp4j/platform",
        "postgresql://sla:pw@db.example/platform?sslmode=Qz7x",
    ],
)
def test_unparsable_database_url_explains_percent_encoding_without_the_password(
    url: str,
) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(database_url=url)
    message = str(raised.value)
    assert message.startswith("invalid setting: DATABASE_URL: "), message
    assert "\n" not in message
    assert not leaks(message), message
    assert "invalid literal" not in message and "Value error" not in message
    if "sslmode" not in url:
        for encoded in ("/ as %2F", "# as %23", "? as %3F", "@ as %40"):
            assert encoded in message, message


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://sla@db.example/platform", "postgresql://"),
        ("postgresql://sla@db.example/platform?target_session_attrs=Qz7x", "target_session_attrs"),
        ("postgresql://sla@db1.example,,db2.example/platform", "host"),
        ("postgresql://sla@db.example:99999/platform", "port"),
        ("postgresql://sla@db.example/platform?sslmode=verify-full", "sslrootcert"),
    ],
)
def test_other_bad_database_urls_say_why(url: str, reason: str) -> None:
    with pytest.raises(SettingsError, match=f"DATABASE_URL: .*{reason}") as raised:
        load_settings(database_url=url)
    assert not leaks(str(raised.value))


def test_settings_repr_masks_the_database_password() -> None:
    settings = load_settings(database_url="postgresql://sla:Qz7x%2FVk9t@db.example/platform")
    shown = repr(settings)
    assert "postgresql://sla:***@db.example/platform" in shown
    assert not leaks(shown) and "Qz7x" not in str(settings)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://sla:Qz7x%2FVk9t@db.example/p", "postgresql://sla:***@db.example/p"),
        ("postgresql://sla@db.example/p?password=Qz7x&sslmode=require",
         "postgresql://sla@db.example/p?password=***&sslmode=require"),
        ("postgresql://sla@db.example/p", "postgresql://sla@db.example/p"),
        (f"postgresql://sla:{PASSWORD}@db.example/p", "(DATABASE_URL, unparsable: not shown)"),
    ],
)  # fmt: skip
def test_redact_url(url: str, expected: str) -> None:
    from sla_daemon.config import redact_url

    assert redact_url(url) == expected


# --- TWILIO_API_BASE_URL: the auth token never crosses a network in clear -------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://api.twilio.com",
        "https://twilio.internal.example:8443/",
        "http://127.0.0.1:8080",
        "http://127.3.4.5:8080",
        "http://localhost:9",
        "http://[::1]:8080",
    ],
)
def test_twilio_base_url_https_or_loopback(url: str) -> None:
    assert load_settings(twilio_api_base_url=url).twilio_api_base_url == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://api.twilio.com",
        "http://10.0.0.5:8080",
        "http://127.0.0.1.example.com",
        "http://localhost.example.com",
        "http://[::2]:8080",
        "https://",
        "ftp://example",
    ],
)
def test_twilio_base_url_in_clear_off_loopback_is_refused(url: str) -> None:
    with pytest.raises(SettingsError, match="TWILIO_API_BASE_URL: must be https://"):
        load_settings(twilio_api_base_url=url)


# --- event retention ----------------------------------------------------------------------


def test_event_retention_defaults_to_a_year(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().event_retention_days == 365
    monkeypatch.setenv("SLA_DAEMON_EVENT_RETENTION_DAYS", "0")
    assert load_settings().event_retention_days == 0
    monkeypatch.setenv("SLA_DAEMON_EVENT_RETENTION_DAYS", "-1")
    with pytest.raises(SettingsError, match="SLA_DAEMON_EVENT_RETENTION_DAYS"):
        load_settings()


# A self-signed CA certificate (CN=sla-test-ca), made for these tests only.
_SELF_SIGNED_CA = """\
-----BEGIN CERTIFICATE-----
MIIBgzCCASmgAwIBAgIULtg6Zt8lvu9Cg00MRumjnR0UuU8wCgYIKoZIzj0EAwIw
FjEUMBIGA1UEAwwLc2xhLXRlc3QtY2EwIBcNMjYxMTMwMDg0NjQ2WhgPMjEyNjEx
MDYwODQ2NDZaMBYxFDASBgNVBAMMC3NsYS10ZXN0LWNhMFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAEkHqNYgNXhma6LWN/bXJep7Uj0VPEqi+7aol39LdUKaXUM38y
9dzPXw73yi8kC+yNLXDRRxmTgPxa20jsZOXTB6NTMFEwHQYDVR0OBBYEFEOfdbWu
sldFfvDbHdWwNptppz95MB8GA1UdIwQYMBaAFEOfdbWusldFfvDbHdWwNptppz95
MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgVJUBAI24STGAPRai
dI8uB9qtBo3P/P6syAS8Glyh5HMCIQD5VsNIekko64kGtDmCf8UV2eYY7ytaoaWk
VQBOnIL/kA==
-----END CERTIFICATE-----
"""


@pytest.mark.parametrize("source", ["environment", "credentials"])
def test_unparsable_json_setting_is_a_settings_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: str
) -> None:
    """pydantic-settings fails before validation for a complex field: no traceback either."""
    if source == "environment":
        monkeypatch.setenv("SLA_DAEMON_TWILIO_CONTENT_SIDS", "{Qz7x")
    else:
        (tmp_path / "SLA_DAEMON_TWILIO_CONTENT_SIDS").write_text("{Qz7x", encoding="utf-8")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == (
        "invalid setting: SLA_DAEMON_TWILIO_CONTENT_SIDS: not valid JSON"
        ' (e.g. {"resolved:zu": "HX..."})'
    )
