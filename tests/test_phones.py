"""Phone numbers as citizens typed them -> E.164, and masks that never reveal them."""

from __future__ import annotations

import re

import pytest

from sla_daemon.phones import InvalidPhoneError, mask_phone, normalize_phone, whatsapp_address


@pytest.mark.parametrize(
    "raw",
    [
        "0821234567",
        "082 123 4567",
        "082-123-4567",
        "(082) 123-4567",
        "+27 82 123 4567",
        "+27821234567",
        "+27 (0)82 123 4567",
        "27821234567",
        "0027821234567",
        "whatsapp:+27821234567",
        "WhatsApp: +27 82 123 4567",
        "  0821234567\n",
    ],
)
def test_south_african_mobile_formats(raw: str) -> None:
    assert normalize_phone(raw) == "+27821234567"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0601234567", "+27601234567"),
        ("0711234567", "+27711234567"),
        ("+447911123456", "+447911123456"),
        ("+1 415 523 8886", "+14155238886"),
        ("+234 803 123 4567", "+2348031234567"),
        ("+263 77 123 4567", "+263771234567"),
    ],
)
def test_other_valid_numbers(raw: str, expected: str) -> None:
    assert normalize_phone(raw) == expected


def test_region_decides_national_numbers() -> None:
    assert normalize_phone("07911 123456", region="GB") == "+447911123456"
    assert normalize_phone("07911 123456", region="gb") == "+447911123456"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "no phone number"),
        ("", "no phone number"),
        ("   ", "no phone number"),
        ("whatsapp:", "no phone number"),
        ("n/a", "contains letters"),
        ("082abc4567", "contains letters"),
        ("0800-FLOWERS", "contains letters"),
        ("112", "too short"),
        ("10111", "too short"),
        ("082123", "too short"),
        ("+2782123456", "too short"),
        ("08212345678901", "too long"),
        ("+999123456789", "unknown country code"),
        ("0211234567", "not a mobile number"),
        ("0800123456", "not a mobile number"),
        ("0861234567", "not a mobile number"),
        ("---", "too short"),
    ],
)
def test_unusable_numbers_say_why(raw: str | None, reason: str) -> None:
    with pytest.raises(InvalidPhoneError, match=reason) as caught:
        normalize_phone(raw)
    assert isinstance(caught.value, ValueError)
    digits = re.sub(r"\D", "", raw or "")
    if len(digits) >= 6:
        assert digits not in str(caught.value)


def test_whatsapp_address() -> None:
    assert whatsapp_address("+27821234567") == "whatsapp:+27821234567"
    assert whatsapp_address("whatsapp:+27821234567") == "whatsapp:+27821234567"
    with pytest.raises(InvalidPhoneError):
        whatsapp_address("0821234567")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("+27821234567", "+27*****4567"),
        ("whatsapp:+27821234567", "+27*****4567"),
        ("0821234567", "******4567"),
        ("+447911123456", "+44******3456"),
        ("+2348031234567", "+234******4567"),
        ("+12345678", "******78"),
        ("12345", "***"),
        ("", "***"),
        (None, "***"),
        ("garbage", "***"),
    ],
)
def test_mask_phone(value: str | None, expected: str) -> None:
    assert mask_phone(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "+27821234567",
        "0821234567",
        "+27 82 123 4567",
        "+14155238886",
        "+447911123456",
        "+12345678",
        "1234567",
        "+1234567890123",
        "082-123-4567",
    ],
)
def test_mask_never_reveals_the_number(value: str) -> None:
    masked = mask_phone(value)
    shown = re.sub(r"\D", "", masked)
    digits = re.sub(r"\D", "", value)
    assert len(digits) - len(shown) >= 4, masked
    national = digits[-9:]
    assert national not in shown
