"""Settings from the environment and systemd credentials, and readable errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
