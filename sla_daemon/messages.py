"""WhatsApp message texts, one TOML catalog per language in ``sla_daemon/catalogs``.

English is the reference: every other catalog must have exactly its keys and, per key,
exactly its placeholders, so a translation can never crash or silently drop the
tracking number at send time. Adding a language is adding ``<code>.toml``.
"""

from __future__ import annotations

import functools
import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FALLBACK_LANGUAGE",
    "PLACEHOLDERS",
    "REOPENED_FROM",
    "STAFF_TEXTS",
    "STATUSES",
    "CatalogError",
    "MessageCatalog",
    "normalize_language",
]

#: Ticket statuses a catalog must cover, as the platform stores them.
STATUSES: tuple[str, ...] = ("open", "in_progress", "escalated", "resolved", "closed")
#: A ticket opened again from one of these gets the reopened notice, not the first report's.
REOPENED_FROM: frozenset[str] = frozenset({"resolved", "closed"})
#: The only placeholders a text may use, in the order a template numbers them
#: ({{1}}, {{2}}, ...: the ones a text uses, in this order).
VARIABLE_ORDER: tuple[str, ...] = (
    "tracking_number",
    "status_label",
    "category",
    "overdue",
    "level",
    "deadline",
)
PLACEHOLDERS: frozenset[str] = frozenset(VARIABLE_ORDER)
#: Staff alerts (issue 12): the outbox kind -> its text. They name the category, how
#: overdue the ticket is (``3 h 20 min``), the escalation level, or the deadline.
STAFF_TEXTS: Mapping[str, str] = {
    "staff_escalation": "staff.escalation",
    "staff_warning": "staff.warning",
}
#: The reference catalog and the language used when a citizen's is unknown.
FALLBACK_LANGUAGE = "en"

_DEFAULT_DIRECTORY = Path(__file__).resolve().parent / "catalogs"
_CODE = re.compile(r"^[a-z]{2,3}$")
_FORMATTER = string.Formatter()


class CatalogError(Exception):
    """A catalog is missing, malformed or out of step with English; or a key is unknown."""


@dataclass(frozen=True)
class MessageCatalog:
    """Validated texts by language code, then by flat key (``status.open``, ...)."""

    texts: Mapping[str, Mapping[str, str]]
    names: Mapping[str, str]
    aliases: Mapping[str, str]
    sources: Mapping[str, Path]

    @classmethod
    def load(cls, directory: Path | None = None) -> MessageCatalog:
        """Read and validate every ``*.toml`` in ``directory`` (default: the bundled ones)."""
        directory = directory or _DEFAULT_DIRECTORY
        files = sorted(directory.glob("*.toml"))
        if not files:
            raise CatalogError(f"no message catalogs (*.toml) in {directory}")
        texts: dict[str, dict[str, str]] = {}
        names: dict[str, str] = {}
        aliases: dict[str, str] = {}
        sources: dict[str, Path] = {}
        for path in files:
            code = path.stem.lower()
            if not _CODE.match(code):
                raise CatalogError(f"{path.name}: file name must be a 2-3 letter language code")
            try:
                with path.open("rb") as handle:
                    data = tomllib.load(handle)
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise CatalogError(f"{path.name}: cannot read catalog: {exc}") from None
            meta = data.pop("meta", {})
            name = meta.get("name") if isinstance(meta, dict) else None
            if not isinstance(name, str) or not name.strip():
                raise CatalogError(f"{path.name}: [meta] name must be a non-empty string")
            extra_aliases = meta.get("aliases", [])
            if not isinstance(extra_aliases, list) or not all(
                isinstance(alias, str) for alias in extra_aliases
            ):
                raise CatalogError(f"{path.name}: [meta] aliases must be a list of strings")
            texts[code] = _flatten(data, path.name)
            names[code] = name
            sources[code] = path
            for alias in (name, *extra_aliases):
                aliases.setdefault(alias.strip().lower(), code)
        catalog = cls(texts=texts, names=names, aliases=aliases, sources=sources)
        catalog.validate()
        return catalog

    def validate(self) -> None:
        """Raise CatalogError unless every language matches English key for key."""
        if FALLBACK_LANGUAGE not in self.texts:
            raise CatalogError(f"missing the reference catalog {FALLBACK_LANGUAGE}.toml")
        reference = self.texts[FALLBACK_LANGUAGE]
        required = {
            "escalation_notice",
            "neutral_notice",
            "reopened_notice",
            *STAFF_TEXTS.values(),
        } | {f"{table}.{status}" for table in ("status", "status_label") for status in STATUSES}
        missing = sorted(required - reference.keys())
        if missing:
            raise CatalogError(f"{self._file(FALLBACK_LANGUAGE)}: missing keys {missing}")
        expected = {key: self._placeholders(FALLBACK_LANGUAGE, key) for key in reference}
        for language, entries in self.texts.items():
            where = self._file(language)
            if missing := sorted(reference.keys() - entries.keys()):
                raise CatalogError(f"{where}: missing keys {missing} that en.toml has")
            if extra := sorted(entries.keys() - reference.keys()):
                raise CatalogError(f"{where}: unknown keys {extra} that en.toml does not have")
            for key in entries:
                found = self._placeholders(language, key)
                if found != expected[key]:
                    raise CatalogError(
                        f"{where}: key {key!r} uses placeholders {sorted(found)}, "
                        f"en.toml uses {sorted(expected[key])}"
                    )

    @property
    def languages(self) -> tuple[str, ...]:
        """Language codes with a catalog, sorted."""
        return tuple(sorted(self.texts))

    def normalize_language(self, code: str | None) -> str:
        """Map 'zu-ZA', 'isiZulu', 'AF', ... to a catalog code; anything else to English."""
        return self._lookup(code) or FALLBACK_LANGUAGE

    def falls_back(self, code: str | None) -> bool:
        """A language is given (not blank) that no catalog has: English is sent instead."""
        return bool(code and code.strip()) and self._lookup(code) is None

    def _lookup(self, code: str | None) -> str | None:
        if code is None:
            return None
        value = code.strip().lower().replace("_", "-")
        if value in self.aliases:
            return self.aliases[value]
        primary = value.split("-", 1)[0]
        if primary in self.texts:
            return primary
        return self.aliases.get(primary)

    def status_label(self, status: str, language: str | None) -> str:
        """The citizen-facing name of ``status`` in ``language``."""
        return self._text(language, f"status_label.{self._status(status)}")

    def render_status(self, status: str, language: str | None, tracking_number: str) -> str:
        """The text sent when a ticket changes to ``status``."""
        status = self._status(status)
        return self._text(language, f"status.{status}").format(
            tracking_number=tracking_number,
            status_label=self.status_label(status, language),
        )

    def render_reopened(self, language: str | None, tracking_number: str) -> str:
        """The text sent when a resolved or closed ticket is opened again: not the
        first report's "your complaint has been logged"."""
        return self._text(language, "reopened_notice").format(
            tracking_number=tracking_number,
            status_label=self.status_label("open", language),
        )

    def render_escalation(self, language: str | None, tracking_number: str) -> str:
        """The text sent when the daemon escalates a ticket for a missed deadline."""
        return self._text(language, "escalation_notice").format(
            tracking_number=tracking_number,
            status_label=self.status_label("escalated", language),
        )

    def render_neutral(self, language: str | None, tracking_number: str) -> str:
        """A sensitive ticket's update: names no category, status or detail."""
        return self._text(language, "neutral_notice").format(
            tracking_number=tracking_number, status_label=""
        )

    def render_staff(self, kind: str, language: str | None, values: Mapping[str, str]) -> str:
        """A staff alert (``staff_escalation``, ``staff_warning``) in ``language``;
        ``values`` holds every placeholder of VARIABLE_ORDER but the status label."""
        return self._text(language, self._staff_key(kind)).format(**{"status_label": "", **values})

    def variables(self, kind: str) -> tuple[str, ...]:
        """The placeholders a staff alert's text uses, in template order: {{1}} is the
        first. Every language uses the same ones (``validate``)."""
        used = self._placeholders(FALLBACK_LANGUAGE, self._staff_key(kind))
        return tuple(name for name in VARIABLE_ORDER if name in used)

    def _staff_key(self, kind: str) -> str:
        if kind not in STAFF_TEXTS:
            raise CatalogError(f"unknown staff alert {kind!r}; expected one of {list(STAFF_TEXTS)}")
        return STAFF_TEXTS[kind]

    def _status(self, status: str) -> str:
        if status not in STATUSES:
            raise CatalogError(f"unknown ticket status {status!r}; expected one of {STATUSES}")
        return status

    def _text(self, language: str | None, key: str) -> str:
        return self.texts[self.normalize_language(language)][key]

    def _file(self, language: str) -> str:
        source = self.sources.get(language)
        return source.name if source else f"{language}.toml"

    def _placeholders(self, language: str, key: str) -> frozenset[str]:
        """The named fields of one text; refuses anything str.format could trip on."""
        where = f"{self._file(language)}: key {key!r}"
        try:
            fields = [field for _, field, _, _ in _FORMATTER.parse(self.texts[language][key])]
        except ValueError as exc:
            raise CatalogError(f"{where}: malformed format string: {exc}") from None
        names = frozenset(field for field in fields if field is not None)
        if bad := sorted(names - PLACEHOLDERS):
            raise CatalogError(
                f"{where}: unsupported placeholders {bad}; allowed: {sorted(PLACEHOLDERS)}"
            )
        try:  # conversions and format specs only fail when applied
            self.texts[language][key].format(**dict.fromkeys(PLACEHOLDERS, "x"))
        except (ValueError, KeyError, IndexError, AttributeError) as exc:
            raise CatalogError(f"{where}: malformed format string: {exc!r}") from None
        return names


def _flatten(data: Mapping[str, object], filename: str, prefix: str = "") -> dict[str, str]:
    """``{"status": {"open": "..."}}`` -> ``{"status.open": "..."}``; all leaves must be text."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, filename, f"{full}."))
        elif isinstance(value, str):
            flat[full] = value
        else:
            raise CatalogError(f"{filename}: key {full!r} must be text, not {type(value).__name__}")
    return flat


@functools.cache
def _default_catalog() -> MessageCatalog:
    return MessageCatalog.load()


def normalize_language(code: str | None) -> str:
    """Map a stored language preference to a bundled catalog code, defaulting to English."""
    return _default_catalog().normalize_language(code)
