"""WhatsApp templates as Twilio Content API definitions, built from the message catalogs.

Outside the 24-hour window WhatsApp delivers only approved templates. The catalogs
are the one source of the texts: each status and the escalation notice (and the
neutral notice for sensitive tickets), in every language, becomes a ``twilio/text``
content with ``{{1}}`` for the tracking number and ``{{2}}`` for the status label,
the variables the sender fills in (``ContentVariables``). Staff alerts (issue 12) are
business-initiated too: ``staff_escalation`` and ``staff_warning`` number the
placeholders their text uses in the order of ``messages.VARIABLE_ORDER`` (the
escalation: 1 tracking number, 2 category, 3 how overdue, 4 level). ``sla-daemon templates
push`` creates them through the Content API, asks WhatsApp to approve each (category
UTILITY) and prints the SIDs as the JSON for ``SLA_DAEMON_TWILIO_CONTENT_SIDS``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from twilio.rest import Client
from twilio.rest.content.v1.content import ContentList
from twilio.rest.content.v1.content.approval_create import ApprovalCreateList

from .config import Settings
from .messages import STAFF_TEXTS, STATUSES, VARIABLE_ORDER, MessageCatalog

__all__ = ["Definition", "definitions", "push", "template_keys"]

log = logging.getLogger(__name__)

_SAMPLE_TRACKING_NUMBER = "TKT-000123"
#: What a staff alert's template shows WhatsApp's reviewers for each variable.
_STAFF_SAMPLES = {
    "tracking_number": _SAMPLE_TRACKING_NUMBER,
    "category": "water",
    "overdue": "3 h 20 min",
    "level": "2",
    "deadline": "2025-04-29 15:30 SAST",
}


@dataclass(frozen=True)
class Definition:
    """One Content API template; ``key`` is its SLA_DAEMON_TWILIO_CONTENT_SIDS key."""

    key: str
    friendly_name: str
    language: str
    body: str
    variables: dict[str, str]

    def as_content(self) -> dict[str, Any]:
        """The Content API's create request."""
        return {
            "friendly_name": self.friendly_name,
            "language": self.language,
            "variables": self.variables,
            "types": {"twilio/text": {"body": self.body}},
        }


def template_keys(
    catalog: MessageCatalog, *, neutral: bool = False, staff_warning: bool = False
) -> list[str]:
    """Every key a complete SLA_DAEMON_TWILIO_CONTENT_SIDS has (the neutral notice with
    SLA_DAEMON_SENSITIVE_MESSAGES=neutral, the staff warning with
    SLA_DAEMON_WARN_TEAM_MANAGER)."""
    kinds = [
        *STATUSES,
        "reopened",
        "escalation",
        "staff_escalation",
        *(["staff_warning"] if staff_warning else []),
        *(["neutral"] if neutral else []),
    ]
    return [f"{kind}:{lang}" for kind in kinds for lang in catalog.languages]


def definitions(catalog: MessageCatalog) -> list[Definition]:
    """Every template, in every language, from the catalog texts."""
    placeholders = {"tracking_number": "{{1}}", "status_label": "{{2}}"}
    out = []
    for key in template_keys(catalog, neutral=True, staff_warning=True):
        kind, lang = key.split(":")
        if kind in STAFF_TEXTS:
            out.append(_staff_definition(catalog, kind, lang))
            continue
        text_key = {
            "escalation": "escalation_notice",
            "neutral": "neutral_notice",
            "reopened": "reopened_notice",
        }.get(kind, f"status.{kind}")
        shown = {"escalation": "escalated", "reopened": "open"}.get(kind, kind)
        label = catalog.status_label(shown, lang) if kind != "neutral" else ""
        body = catalog.texts[lang][text_key].format(**placeholders)
        variables = {"1": _SAMPLE_TRACKING_NUMBER}
        if "{{2}}" in body:
            variables["2"] = label
        out.append(Definition(key, f"sla_daemon_{kind}_{lang}", lang, body, variables))
    return out


def _staff_definition(catalog: MessageCatalog, kind: str, lang: str) -> Definition:
    """A staff alert's template: its placeholders numbered in template order."""
    names = catalog.variables(kind)
    numbered = {name: f"{{{{{i}}}}}" for i, name in enumerate(names, 1)}
    blank = dict.fromkeys(VARIABLE_ORDER, "")
    body = catalog.render_staff(kind, lang, {**blank, **numbered})
    variables = {str(i): _STAFF_SAMPLES[name] for i, name in enumerate(names, 1)}
    return Definition(f"{kind}:{lang}", f"sla_daemon_{kind}_{lang}", lang, body, variables)


def push(settings: Settings, catalog: MessageCatalog) -> dict[str, str]:
    """Create every template and request its WhatsApp approval; key -> content SID.

    Synchronous on purpose: twilio-python's async HTTP client sends the Content API's
    JSON bodies form-encoded (it ignores their Content-Type), its sync one does not."""
    token = settings.twilio_auth_token
    if not settings.twilio_account_sid or token is None:
        raise ValueError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are needed")
    client = Client(
        settings.twilio_account_sid,
        token.get_secret_value(),
        environment={"SLA_DAEMON": "1"},
    )
    client.http_client.timeout = settings.send_timeout_seconds
    client.content.base_url = settings.twilio_content_base_url
    sids: dict[str, str] = {}
    for d in definitions(catalog):
        content = client.content.v1.contents.create(
            ContentList.ContentCreateRequest(d.as_content())
        )
        sid = str(content.sid)
        approval = ApprovalCreateList.ContentApprovalRequest(
            {"name": d.friendly_name, "category": "UTILITY"}
        )
        client.content.v1.contents(sid).approval_create.create(approval)
        sids[d.key] = sid
        log.info("template %s created as %s, approval requested", d.key, sid)
    return sids
