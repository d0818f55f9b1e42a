"""What ships: the systemd unit, its env example, the Dockerfile and the wheel's contents."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import AliasChoices

from sla_daemon.config import Settings

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "packaging" / "sla-daemon.service"
TEMPLATE = ROOT / "packaging" / "sla-daemon@.service"
ENV_EXAMPLE = ROOT / "packaging" / "sla-daemon.env.example"
DOCKERFILE = ROOT / "Dockerfile"
README = ROOT / "README.md"
#: Lock file -> the command that regenerates it (in its header and in the README).
LOCKS = {
    "requirements.lock": "uv pip compile pyproject.toml --generate-hashes --python-version 3.11"
    " --python-platform linux -o requirements.lock",
    "requirements-build.lock": "uv pip compile requirements-build.in --generate-hashes"
    " --python-version 3.11 --python-platform linux -o requirements-build.lock",
}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values...]}}; keys may repeat, `\\` continues."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a Key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    unit = parse_unit(UNIT.read_text(encoding="utf-8"))
    assert set(unit) == {"Unit", "Service", "Install"}
    return unit["Service"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecStart", "/usr/local/bin/sla-daemon run"),
        ("WatchdogSec", "30"),
        ("Restart", "on-failure"),
        ("RestartSec", "5"),
        ("TimeoutStopSec", "30"),
        ("KillSignal", "SIGTERM"),
        ("EnvironmentFile", "-/etc/sla-daemon/sla-daemon.env"),
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallFilter", "@system-service"),
        ("CapabilityBoundingSet", ""),
        ("MemoryMax", "256M"),
    ],
)
def test_unit_directive(service: dict[str, list[str]], key: str, value: str) -> None:
    assert service.get(key) == [value]


def test_unit_credentials_are_named_like_the_settings(service: dict[str, list[str]]) -> None:
    """The daemon reads $CREDENTIALS_DIRECTORY/<ENV_NAME>: the credential IDs must match."""
    assert sorted(service["LoadCredential"]) == [
        "DATABASE_URL:/etc/sla-daemon/credentials/database-url",
        "TWILIO_AUTH_TOKEN:/etc/sla-daemon/credentials/twilio-auth-token",
    ]
    names = _setting_env_names()
    for credential in service["LoadCredential"]:
        assert credential.partition(":")[0] in names


def test_unit_does_not_restart_on_a_configuration_error(service: dict[str, list[str]]) -> None:
    from sla_daemon.cli import EX_CONFIG

    assert service["RestartPreventExitStatus"] == [str(EX_CONFIG)]


@pytest.mark.parametrize(
    ("source", "name"), [(UNIT, "sla-daemon"), (TEMPLATE, "sla-daemon@joburg")]
)
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, source: Path, name: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart's binary exists: point it at one that does.
    stand_in = tmp_path / "sla-daemon"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    unit = tmp_path / f"{name}.service"
    unit.write_text(
        source.read_text(encoding="utf-8").replace("/usr/local/bin/sla-daemon", str(stand_in))
    )
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert f"{name}.service" not in result.stderr, result.stderr


def test_template_unit_differs_only_in_its_per_instance_files(
    service: dict[str, list[str]],
) -> None:
    """Several instances on one host: each its own env file and credentials, else the
    same hardened service (a directive added to one unit must go into both)."""
    template = parse_unit(TEMPLATE.read_text(encoding="utf-8"))
    assert set(template) == {"Unit", "Service", "Install"}
    own = template["Service"]
    assert own["EnvironmentFile"] == ["/etc/sla-daemon/%i.env"]
    assert sorted(own["LoadCredential"]) == [
        "DATABASE_URL:/etc/sla-daemon/%i/database-url",
        "TWILIO_AUTH_TOKEN:/etc/sla-daemon/%i/twilio-auth-token",
    ]
    per_instance = {"EnvironmentFile", "LoadCredential"}
    assert {k: v for k, v in own.items() if k not in per_instance} == {
        k: v for k, v in service.items() if k not in per_instance
    }
    assert "%i" in template["Unit"]["Description"][0]


def test_template_unit_tells_each_instance_to_take_its_own_metrics_port() -> None:
    comments = " ".join(
        line.lstrip("# ")
        for line in TEMPLATE.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    )
    assert "its OWN metrics port" in comments and "SLA_DAEMON_METRICS_ADDRESS" in comments


def _setting_env_names() -> set[str]:
    names: set[str] = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
        else:
            names.add("SLA_DAEMON_" + field_name.upper())
    return names


def test_env_example_names_only_real_settings() -> None:
    names = re.findall(r"^#?([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(encoding="utf-8"), re.M)
    assert {"DATABASE_URL", "TWILIO_ACCOUNT_SID", "SLA_DAEMON_METRICS_ADDRESS"} <= set(names)
    unknown = set(names) - _setting_env_names()
    assert not unknown, f"env example names settings that do not exist: {sorted(unknown)}"


def test_env_example_holds_no_secret() -> None:
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        assert not line.startswith("TWILIO_AUTH_TOKEN"), line
        assert not re.match(r"^DATABASE_URL=\S*:[^@/]+@", line), line  # a password


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_dockerfile() -> None:
    instructions = _instructions(DOCKERFILE.read_text(encoding="utf-8"))
    by_keyword: dict[str, list[str]] = {}
    for keyword, rest in instructions:
        by_keyword.setdefault(keyword, []).append(rest)

    # The base image by digest (a tag can be re-pointed), its tag beside it for readers.
    (image,) = [arg for arg in by_keyword["ARG"] if arg.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", image)
    assert by_keyword["FROM"] == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]
    runs = by_keyword["RUN"]
    # The wheel is built with locked, hash-checked build tools, without build isolation...
    assert any("--require-hashes -r requirements-build.lock" in run for run in runs)
    assert any("pip wheel --no-build-isolation --no-deps" in run for run in runs)
    # ...and the image gets the locked dependencies, hash-checked, then the wheel alone.
    (install,) = [run for run in runs if "from=builder" in run]
    assert "pip install --require-hashes --only-binary=:all: -r /wheels/requirements.lock" in (
        install
    )
    assert "pip install --no-index --no-deps /wheels/sla_daemon-" in install
    assert not re.search(r"pip install (?!.*--require-hashes)(?!.*--no-deps)", install)
    assert by_keyword["USER"] == ["10001:10001"]
    # Exec form, so the daemon itself is PID 1 and receives SIGTERM.
    assert json.loads(by_keyword["ENTRYPOINT"][0]) == ["sla-daemon"]
    assert json.loads(by_keyword["CMD"][0]) == ["run"]
    assert by_keyword["STOPSIGNAL"] == ["SIGTERM"]
    assert by_keyword["EXPOSE"] == ["9108"]
    env = " ".join(by_keyword["ENV"])
    for setting in (
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONUNBUFFERED=1",
        "SLA_DAEMON_METRICS_ADDRESS=0.0.0.0:9108",
    ):
        assert setting in env
    (healthcheck,) = by_keyword["HEALTHCHECK"]
    assert '["sla-daemon", "healthcheck"]' in healthcheck  # tested in test_operator_mistakes
    # Installed as root; runs as 10001.
    keywords = [keyword for keyword, _ in instructions]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")


def test_dockerignore_keeps_what_the_build_copies() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in ("pyproject.toml", "README.md", "sla_daemon", "sql", *LOCKS):
        assert needed not in ignored
    assert {".git", ".venv", "tests"} <= ignored


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """The project's wheel, built as a user would (pip, isolated build environment)."""
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    (built,) = out.glob("sla_daemon-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def test_wheel_contains_sql_and_catalogs(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    migrations = sorted(p.name for p in (ROOT / "sql" / "migrations").glob("*.sql"))
    assert migrations, "no migrations in the checkout"
    for name in migrations:
        assert f"sla_daemon/sql/migrations/{name}" in names
    assert "sla_daemon/sql/queries.sql" in names
    assert "sla_daemon/sql/uninstall.sql" in names
    catalogs = sorted(p.name for p in (ROOT / "sla_daemon" / "catalogs").glob("*.toml"))
    assert catalogs, "no message catalogs in the checkout"
    for name in catalogs:
        assert f"sla_daemon/catalogs/{name}" in names
    assert "sla_daemon/systemd.py" in names
    assert not any("/tests/" in n or n.startswith("tests/") for n in names)


def test_wheel_has_the_console_script(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    assert re.search(r"^sla-daemon\s*=\s*sla_daemon\.cli:main$", text, re.M), text


_PIN = re.compile(r"([a-z0-9][a-z0-9._-]*)==(\S+)((?:\s*\\\s*--hash=sha256:[0-9a-f]{64})+)\s*$")


def _locked(name: str) -> dict[str, tuple[str, list[str]]]:
    """A hash lock file as {package: (version, [sha256 hashes])}."""
    text = (ROOT / name).read_text(encoding="utf-8")
    locked: dict[str, tuple[str, list[str]]] = {}
    for entry in re.split(r"\n(?=[a-z0-9])", re.sub(r"(?m)^\s*#.*\n?", "", text).strip()):
        match = _PIN.match(entry)
        assert match, f"{name}: not an exact pin with hashes: {entry!r}"
        locked[match.group(1)] = (match.group(2), re.findall(r"[0-9a-f]{64}", match.group(3)))
    return locked


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_lock_files_pin_every_package_with_hashes_and_say_how_to_regenerate(name: str) -> None:
    header = (ROOT / name).read_text(encoding="utf-8").splitlines()[:2]
    assert header[1].strip("# ") == LOCKS[name], header
    assert LOCKS[name] in README.read_text(encoding="utf-8")
    assert all(hashes for _version, hashes in _locked(name).values())


@pytest.mark.parametrize(
    ("name", "requirements"),
    [
        ("requirements.lock", "dependencies"),
        ("requirements-build.lock", "build-system"),
    ],
)
def test_lock_files_satisfy_pyproject(name: str, requirements: str) -> None:
    """A dependency added to (or tightened in) pyproject.toml needs the lock regenerated."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = (
        project["project"]["dependencies"]
        if requirements == "dependencies"
        else project["build-system"]["requires"]
    )
    locked = {canonicalize_name(k): v for k, v in _locked(name).items()}
    for line in wanted:
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate({"sys_platform": "linux"}):
            continue
        name_ = canonicalize_name(requirement.name)
        assert name_ in locked, f"{requirement.name} is not in {name}: regenerate it"
        version = locked[name_][0]
        assert requirement.specifier.contains(version), f"{name}: {name_}=={version} vs {line}"


@pytest.mark.parametrize(
    "unit", [ROOT / "packaging" / "sla-daemon.service", TEMPLATE], ids=lambda p: p.name
)
def test_the_units_migrate_example_uses_the_migration_roles_url(unit: Path) -> None:
    """The daemon's least-privilege URL cannot create triggers: migrate needs the
    migration role's."""
    text = unit.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.startswith("#")]
    migrate = [
        i
        for i, line in enumerate(lines)
        if line.rstrip().endswith("sla-daemon migrate") or "sla-daemon migrate " in line
    ]
    assert migrate, "the unit lost its migrate example"
    for i in migrate:
        context = " ".join(lines[max(0, i - 2) : i + 1])
        assert "migrat" in context.replace("sla-daemon migrate", ""), context
        assert "credentials/database-url" not in context, context
