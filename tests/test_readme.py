"""What the README promises about configuration and the container holds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from sla_daemon.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The README's text from the heading ``title`` to the next heading of any level."""
    start = README.index(f"\n{title}\n")
    end = README.find("\n#", start + len(title) + 2)
    return README[start:end]


CONFIGURATION = section("## Configuration")
CONTAINER = section("### Container")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "CREDENTIALS_DIRECTORY", "TWILIO_API_BASE_URL", "PGSSLROOTCERT"):
        monkeypatch.delenv(name, raising=False)


def example_urls(text: str) -> list[str]:
    return re.findall(r"postgresql://[^\s`']+", text)


def test_every_database_url_example_is_accepted(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("", encoding="ascii")  # existence is what start-up checks
    urls = example_urls(CONFIGURATION) + example_urls(CONTAINER)
    assert len(urls) >= 5, urls
    assert any("sslmode=verify-full&sslrootcert=/path/ca.pem" in url for url in urls)
    for url in urls:
        url = url.replace("/path/ca.pem", str(ca)).replace("/run/secrets/ca.pem", str(ca))
        url = url.replace(":...@", ":pw@")
        assert load_settings(database_url=url).database_url == url


def test_the_percent_encoding_example_decodes_to_the_password() -> None:
    (url,) = [u for u in example_urls(CONFIGURATION) if "%2F" in u]
    assert "`p/ss#w?rd`" in CONFIGURATION
    assert unquote(urlsplit(url).password or "") == "p/ss#w?rd"
    for raw, encoded in {"/": "%2F", "#": "%23", "?": "%3F", "@": "%40", ":": "%3A"}.items():
        assert f"`{raw}` as `{encoded}`" in " ".join(CONFIGURATION.split())


def test_the_encoding_one_liner_encodes_a_password_from_stdin() -> None:
    (code,) = re.findall(r"`python3 -c '([^']+)'`", CONFIGURATION)
    result = subprocess.run(
        [sys.executable, "-c", code],
        input="p/ss#w?rd@x:y%z\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout == "p%2Fss%23w%3Frd%40x%3Ay%25z\n", result.stderr


def test_verify_full_without_a_root_certificate_stops_start_up() -> None:
    """The README: verify-ca/verify-full without a CA file is refused at start-up."""
    from sla_daemon.config import SettingsError

    assert "`verify-ca`/`verify-full` without one, stops start-up" in " ".join(
        CONFIGURATION.split()
    )
    for mode in ("verify-ca", "verify-full"):
        with pytest.raises(SettingsError, match="sslrootcert"):
            load_settings(database_url=f"postgresql://sla@db.example/p?sslmode={mode}")


def test_container_example_passes_secrets_as_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    for text in (CONTAINER, dockerfile):
        assert not re.search(r"-e\s+(DATABASE_URL|TWILIO_AUTH_TOKEN)\b", text)
        assert '-v "$PWD/secrets:/run/secrets:ro" -e CREDENTIALS_DIRECTORY=/run/secrets' in text
    # The files the example writes (printf '%s': no newline) are read as those settings.
    written = dict(re.findall(r"printf '%s' '([^']*)' > secrets/([A-Z_]+)", CONTAINER))
    assert sorted(written.values()) == ["DATABASE_URL", "TWILIO_AUTH_TOKEN"]
    (tmp_path / "ca.pem").write_text("", encoding="ascii")
    url = "postgresql://sla:p%2Fss@db.example/p?sslmode=verify-full&sslrootcert=" + str(
        tmp_path / "ca.pem"
    )
    (tmp_path / "DATABASE_URL").write_text(url + "\n", encoding="utf-8")
    (tmp_path / "TWILIO_AUTH_TOKEN").write_text("token-from-a-file", encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    settings = load_settings()
    assert settings.database_url == url
    assert settings.twilio_auth_token is not None
    assert settings.twilio_auth_token.get_secret_value() == "token-from-a-file"
