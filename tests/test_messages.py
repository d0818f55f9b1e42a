"""The bundled catalogs are complete, and broken ones are refused with a useful message."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from sla_daemon.messages import (
    STATUSES,
    CatalogError,
    MessageCatalog,
    normalize_language,
)

BUNDLED = Path(__file__).resolve().parent.parent / "sla_daemon" / "catalogs"
TRACKING = "JHB-2024-000042"


@pytest.fixture(scope="module")
def catalog() -> MessageCatalog:
    return MessageCatalog.load()


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    """A writable copy of the bundled catalogs, to break."""
    target = tmp_path / "catalogs"
    shutil.copytree(BUNDLED, target)
    return target


def test_bundled_languages(catalog: MessageCatalog) -> None:
    assert catalog.languages == ("af", "en", "zu")
    assert catalog.names == {"af": "Afrikaans", "en": "English", "zu": "isiZulu"}
    catalog.validate()


@pytest.mark.parametrize("language", ["en", "zu", "af"])
@pytest.mark.parametrize("status", STATUSES)
def test_every_status_renders_with_tracking_number(
    catalog: MessageCatalog, language: str, status: str
) -> None:
    text = catalog.render_status(status, language, TRACKING)
    assert TRACKING in text
    assert "{" not in text and "}" not in text
    assert len(text) < 300


@pytest.mark.parametrize("language", ["en", "zu", "af"])
def test_escalation_notice_differs_from_generic_escalated(
    catalog: MessageCatalog, language: str
) -> None:
    notice = catalog.render_escalation(language, TRACKING)
    assert TRACKING in notice
    assert notice != catalog.render_status("escalated", language, TRACKING)


def test_languages_really_differ(catalog: MessageCatalog) -> None:
    texts = {lang: catalog.render_status("resolved", lang, TRACKING) for lang in catalog.languages}
    assert len(set(texts.values())) == 3
    assert "resolved" in texts["en"]
    assert "opgelos" in texts["af"]
    assert "sixazululiwe" in texts["zu"]


def test_status_label_is_filled_in(catalog: MessageCatalog) -> None:
    assert "In progress" in catalog.render_status("in_progress", "en", TRACKING)
    assert catalog.status_label("escalated", "af") == "Geëskaleer"


def test_unknown_status_is_a_catalog_error(catalog: MessageCatalog) -> None:
    with pytest.raises(CatalogError, match="unknown ticket status 'reopened'"):
        catalog.render_status("reopened", "en", TRACKING)


def test_unknown_language_falls_back_to_english(catalog: MessageCatalog) -> None:
    assert catalog.render_status("open", "xh", TRACKING) == catalog.render_status(
        "open", "en", TRACKING
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("en", "en"),
        ("ZU", "zu"),
        ("zu-ZA", "zu"),
        ("zu_ZA", "zu"),
        (" isiZulu ", "zu"),
        ("zulu", "zu"),
        ("Zulu", "zu"),
        ("zul", "zu"),
        ("af", "af"),
        ("af-ZA", "af"),
        ("Afrikaans", "af"),
        ("AFR", "af"),
        ("en-GB", "en"),
        ("English", "en"),
        ("", "en"),
        ("   ", "en"),
        (None, "en"),
        ("xh", "en"),
        ("fr-FR", "en"),
        ("klingon", "en"),
    ],
)
def test_normalize_language(raw: str | None, expected: str) -> None:
    assert normalize_language(raw) == expected


def test_new_language_is_just_a_file(catalog_dir: Path) -> None:
    text = (catalog_dir / "en.toml").read_text(encoding="utf-8")
    text = text.replace('name = "English"', 'name = "isiXhosa"').replace(
        'aliases = ["english", "eng"]', 'aliases = ["xhosa"]'
    )
    (catalog_dir / "xh.toml").write_text(text, encoding="utf-8")
    extended = MessageCatalog.load(catalog_dir)
    assert extended.languages == ("af", "en", "xh", "zu")
    assert extended.normalize_language("xh-ZA") == "xh"
    assert extended.normalize_language("isiXhosa") == "xh"
    assert extended.normalize_language("Xhosa") == "xh"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('closed = "Sivaliwe"\n', "", r"zu\.toml: missing keys \['status_label\.closed'\]"),
        (
            "[status_label]",
            'reopened = "x"\n[status_label]',
            r"zu\.toml: unknown keys \['status\.reopened'\]",
        ),
        (
            "Isimo: {status_label}.",
            "Isimo: {status}.",
            r"zu\.toml: key 'status\.in_progress': unsupported placeholders \['status'\]",
        ),
        (
            "ngenombolo yokulandelela {tracking_number}",
            "ngenombolo yokulandelela",
            r"zu\.toml: key 'status\.open' uses placeholders \[\], "
            r"en\.toml uses \['tracking_number'\]",
        ),
        (
            "sakho {tracking_number} sixazululiwe",
            "sakho {tracking_number sixazululiwe",
            r"zu\.toml: key 'status\.resolved': malformed",
        ),
        (
            "sakho {tracking_number} sixazululiwe",
            "sakho {tracking_number!z} sixazululiwe",
            r"zu\.toml: key 'status\.resolved': malformed",
        ),
        (
            "sakho {tracking_number} sixazululiwe",
            "sakho {} sixazululiwe",
            r"zu\.toml: key 'status\.resolved'",
        ),
        ('open = "Sivuliwe"', "open = 3", r"zu\.toml: key 'status_label\.open' must be text"),
        ('name = "isiZulu"', "", r"zu\.toml: \[meta\] name"),
        ("[status]", "[status", r"zu\.toml: cannot read catalog"),
    ],
)
def test_broken_catalog_names_file_and_key(
    catalog_dir: Path, old: str, new: str, message: str
) -> None:
    _edit(catalog_dir / "zu.toml", old, new)
    with pytest.raises(CatalogError, match=message):
        MessageCatalog.load(catalog_dir)


def test_english_must_cover_every_status(catalog_dir: Path) -> None:
    _edit(catalog_dir / "en.toml", 'closed = "Closed"\n', "")
    for other in ("zu", "af"):
        (catalog_dir / f"{other}.toml").unlink()
    with pytest.raises(CatalogError, match=r"en\.toml: missing keys \['status_label\.closed'\]"):
        MessageCatalog.load(catalog_dir)


def test_english_is_required(catalog_dir: Path) -> None:
    (catalog_dir / "en.toml").unlink()
    with pytest.raises(CatalogError, match=r"reference catalog en\.toml"):
        MessageCatalog.load(catalog_dir)


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no message catalogs"):
        MessageCatalog.load(tmp_path)


def test_file_name_must_be_a_language_code(catalog_dir: Path) -> None:
    shutil.copy(catalog_dir / "en.toml", catalog_dir / "english.toml")
    with pytest.raises(CatalogError, match=r"english\.toml: file name"):
        MessageCatalog.load(catalog_dir)


def test_load_is_cheap_enough_for_start_up() -> None:
    started = time.perf_counter()
    for _ in range(10):
        MessageCatalog.load()
    assert (time.perf_counter() - started) / 10 < 0.1
