"""Citizens' replies (issue 13): does a reply say the resolved problem is not fixed?

The keywords are phrases per language (``SLA_DAEMON_NOT_FIXED_KEYWORDS``); every
language's are matched, since citizens mix languages. A phrase counts only as whole
words ("not fixed", not "knot fixed"), any case, whatever the spacing and punctuation.
What a match does (reopen, or record for staff) is decided in the database
(``sla_daemon.record_reply``), by ``SLA_DAEMON_NOT_FIXED_ACTION``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

__all__ = ["says_not_fixed"]

_WORD = re.compile(r"\w+")


def _words(text: str) -> str:
    return " ".join(_WORD.findall(text.casefold()))


def says_not_fixed(body: str, keywords: Mapping[str, Sequence[str]]) -> bool:
    """True when ``body`` holds one of the phrases, as whole words."""
    text = f" {_words(body)} "
    return any(
        f" {phrase} " in text
        for phrases in keywords.values()
        for phrase in map(_words, phrases)
        if phrase
    )
