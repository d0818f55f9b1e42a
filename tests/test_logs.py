"""Log lines cannot be forged: control characters in logged values are escaped."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest

from sla_daemon.logs import setup_logging

#: A tracking number as an attacker would write it: a newline and a forged entry, a CR,
#: a terminal escape (ESC and C1 CSI), DEL, NEL, a tab and Unicode's line separator.
FORGED = "T-1\n2026-01-01 00:00:00,000 ERROR sla_daemon: forged\r\x1b[2J\x9b\x7f\x85\t\u2028x"
#: Every control character: C0, DEL and C1 (and the Unicode line/paragraph separators).
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

log = logging.getLogger("sla_daemon.test_logs")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def emitted(capsys: pytest.CaptureFixture[str], fmt: str) -> list[str]:
    setup_logging("DEBUG", fmt)  # after capsys: the handler writes to the captured stderr
    log.warning("escalated %s", FORGED)
    try:
        raise ValueError(f"bad ticket {FORGED}")
    except ValueError:
        log.exception("failed for %s", "T-2\nforged")
    err = capsys.readouterr().err
    assert err.endswith("\n")
    return err[:-1].split("\n")


@pytest.mark.usefixtures("restore_logging")
def test_text_format_is_one_line_per_event(capsys: pytest.CaptureFixture[str]) -> None:
    lines = emitted(capsys, "text")
    assert len(lines) == 2, lines
    for line in lines:
        assert not CONTROL.search(line), repr(line)
        assert " forged" not in line.split(" ", 3)[:3]
    assert lines[0].endswith(
        "WARNING sla_daemon.test_logs: escalated T-1\\n2026-01-01 00:00:00,000 ERROR "
        "sla_daemon: forged\\r\\x1b[2J\\x9b\\x7f\\x85\\t\\u2028x"
    ), lines[0]
    # the traceback stays readable, on the same line
    assert "failed for T-2\\nforged\\nTraceback (most recent call last):\\n" in lines[1]
    assert lines[1].endswith("ValueError: bad ticket T-1\\n2026-01-01 00:00:00,000 ERROR "
                             "sla_daemon: forged\\r\\x1b[2J\\x9b\\x7f\\x85\\t\\u2028x")  # fmt: skip


@pytest.mark.usefixtures("restore_logging")
def test_json_format_is_one_object_per_line_and_keeps_the_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = emitted(capsys, "json")
    assert len(lines) == 2, lines
    for line in lines:
        assert not CONTROL.search(line), repr(line)
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == f"escalated {FORGED}"  # JSON's own escapes: nothing is lost
    assert second["msg"] == "failed for T-2\nforged"
    assert second["exc"].endswith(f"ValueError: bad ticket {FORGED}")


def test_command_line_logs_through_the_escaping_formatter() -> None:
    """Log records before the settings are read go through the same formatter."""
    from click.testing import CliRunner

    from sla_daemon.cli import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        CliRunner().invoke(main, ["check", "--help"])  # the group runs first
        formatters = [type(h.formatter).__name__ for h in root.handlers]
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert formatters == ["TextFormatter"]
