"""Citizens' phone numbers: as typed into the platform -> E.164 WhatsApp addresses.

Numbers are stored as people typed them (``0821234567``, ``+27 82 123 4567``), so they
are parsed with the municipality's region. ``phonenumbers`` alone is too lenient here:
it accepts short numbers (``082123`` is "valid" for ZA), converts letters to digits,
and knows landlines, none of which can receive a WhatsApp message.
"""

from __future__ import annotations

import re

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType
from phonenumbers import ValidationResult as Possible

__all__ = ["InvalidPhoneError", "mask_phone", "normalize_phone", "whatsapp_address"]

_WHATSAPP_PREFIX = "whatsapp:"
#: Types that can be WhatsApp accounts; plain landlines, toll-free, etc. cannot.
_WHATSAPP_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})
#: Exact national number lengths where phonenumbers' metadata is looser than reality.
_NATIONAL_LENGTH = {27: 9}
_MIN_E164_DIGITS = 8
_LETTERS = re.compile(r"[A-Za-z]")
_POSSIBLE_REASONS = {
    Possible.INVALID_COUNTRY_CODE: "unknown country code",
    Possible.TOO_SHORT: "too short",
    Possible.INVALID_LENGTH: "wrong length",
    Possible.TOO_LONG: "too long",
}


class InvalidPhoneError(ValueError):
    """A number that cannot receive a WhatsApp message; the text says why, without it."""


def normalize_phone(raw: str | None, region: str = "ZA") -> str:
    """Return ``raw`` as E.164 (``+27821234567``) or raise InvalidPhoneError."""
    if raw is None or not raw.strip():
        raise InvalidPhoneError("no phone number")
    text = raw.strip()
    if text.lower().startswith(_WHATSAPP_PREFIX):
        text = text[len(_WHATSAPP_PREFIX) :].strip()
        if not text:
            raise InvalidPhoneError("no phone number")
    if _LETTERS.search(text):
        raise InvalidPhoneError("phone number contains letters")
    digits = re.sub(r"\D", "", text)
    if len(digits) < 6:
        raise InvalidPhoneError("phone number too short")
    try:
        number = phonenumbers.parse(text, region.upper())
    except NumberParseException as exc:
        raise InvalidPhoneError(f"not a phone number ({_parse_reason(exc)})") from None
    reason = phonenumbers.is_possible_number_with_reason(number)
    if reason in _POSSIBLE_REASONS:
        raise InvalidPhoneError(f"phone number {_POSSIBLE_REASONS[reason]}")
    national = phonenumbers.national_significant_number(number)
    expected = _NATIONAL_LENGTH.get(number.country_code or 0)
    if expected is not None and len(national) != expected:
        problem = "too short" if len(national) < expected else "too long"
        raise InvalidPhoneError(
            f"phone number {problem}: +{number.country_code} numbers have {expected} digits "
            "after the country code"
        )
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    if len(e164) - 1 < _MIN_E164_DIGITS:
        raise InvalidPhoneError("phone number too short")
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhoneError("not a valid phone number")
    if phonenumbers.number_type(number) not in _WHATSAPP_TYPES:
        raise InvalidPhoneError("not a mobile number, so it cannot receive WhatsApp")
    return e164


def whatsapp_address(e164: str) -> str:
    """Twilio's WhatsApp address for an E.164 number (idempotent)."""
    value = e164.strip()
    if value.lower().startswith(_WHATSAPP_PREFIX):
        value = value[len(_WHATSAPP_PREFIX) :].strip()
    if not value.startswith("+") or not value[1:].isdigit():
        raise InvalidPhoneError("not an E.164 number")
    return f"{_WHATSAPP_PREFIX}{value}"


def mask_phone(value: str | None) -> str:
    """A loggable form (``+27*****4567``): at most the country code and last 4 digits."""
    if not value:
        return "***"
    text = value.strip()
    if text.lower().startswith(_WHATSAPP_PREFIX):
        text = text[len(_WHATSAPP_PREFIX) :]
    digits = re.sub(r"\D", "", text)
    if len(digits) < 8:
        return "***"
    country = ""
    if text.startswith("+"):
        try:
            country = str(phonenumbers.parse(text, None).country_code or "")
        except NumberParseException:
            country = ""
    shown = 4
    hidden = len(digits) - len(country) - shown
    if hidden < 4:  # too little left to hide: drop what identifies the number most
        country, shown = "", 2
        hidden = len(digits) - shown
    prefix = f"+{country}" if country else ""
    return f"{prefix}{'*' * hidden}{digits[-shown:]}"


def _parse_reason(exc: NumberParseException) -> str:
    return {
        NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
        NumberParseException.NOT_A_NUMBER: "not a number",
        NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
        NumberParseException.TOO_SHORT_NSN: "too short",
        NumberParseException.TOO_LONG: "too long",
    }.get(exc.error_type, "unparseable")
