"""Logging set-up: one line per event, text or JSON, on stderr (journald takes it).

Logged values come from outside (tracking numbers, Twilio's errors, the database's
messages): a newline in one would forge a second log entry, an escape sequence would
drive the terminal of whoever tails the log. The formatters escape every control
character (C0, DEL, C1, and Unicode's line and paragraph separators), so each event is
one line whatever it holds, tracebacks included.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

__all__ = ["JsonFormatter", "PoolNoise", "TextFormatter", "escape_controls", "setup_logging"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    r"""``text`` with each control character written as an escape (``\n``, ``\x1b``, ...)."""
    return _CONTROL.sub(_escape, text)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, one line per event (a traceback's lines as ``\\n``)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return escape_controls(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; values keep their characters (JSON's escapes carry them)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        # json escapes C0 only; DEL, C1 and U+2028/9 go out as \uXXXX too (same value).
        return _CONTROL.sub(
            lambda m: f"\\u{ord(m.group()):04x}", json.dumps(entry, ensure_ascii=False)
        )


class PoolNoise(logging.Filter):
    """asyncpg's pool logs a 30-line traceback at every failed reconnect of its floor
    connections while the database is down; the listener already tells the outage
    once. Such a record becomes one DEBUG line (the error's type and text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        text = " ".join(str(exc).split())
        record.msg = f"{record.getMessage()}: {type(exc).__name__}: {text}"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that would log request details (numbers, bodies) stay quiet.
    for name in ("twilio", "aiohttp.access", "pgserver"):
        logging.getLogger(name).setLevel(logging.WARNING)
    pool = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, PoolNoise) for f in pool.filters):
        pool.addFilter(PoolNoise())
