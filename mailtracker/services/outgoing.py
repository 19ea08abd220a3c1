"""What every message the tracker sends to a unit shares: the signed reply token in the
``Reply-To`` plus-address and in the Message-ID, the sender, and the anti-loop headers."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from email.utils import parseaddr

from mailtracker.config import Config, ConfigError, SmtpSettings, UnitSettings
from mailtracker.domain.tokens import make_token, reply_address, token_message_id
from mailtracker.mail.compose import Attachment, compose, new_nonce
from mailtracker.render import RenderedMail

log = logging.getLogger(__name__)

DIGEST_TOKEN = "d"
ALERT_TOKEN = "a"
_FALLBACK_DOMAIN = "mailtracker.invalid"


def token_key(config: Config) -> bytes:
    """The key reply tokens are signed with (``tracker.secret_key``, UTF-8)."""
    secret = config.tracker.secret_key
    if secret is None:
        raise ConfigError(
            [("tracker.secret_key", "is required to sign the reply tokens of outgoing mail")],
            config.path,
        )
    return secret.reveal().encode("utf-8")


def smtp_settings(config: Config) -> SmtpSettings:
    """The ``[smtp]`` section; ConfigError when mail cannot be sent without it."""
    if config.smtp is None:
        raise ConfigError(
            [("smtp", "is required to send mail (add an [smtp] section)")], config.path
        )
    return config.smtp


def _domain(address: str) -> str:
    domain = parseaddr(address)[1].rpartition("@")[2].strip().lower()
    return domain if domain and all(c.isalnum() or c in ".-" for c in domain) else _FALLBACK_DOMAIN


def unit_reply_to(unit: UnitSettings, token: str) -> str | None:
    """The unit's first mailbox plus-addressed with ``token``; None when the unit has no
    mailbox whose login is an address (the token then travels in the Message-ID alone)."""
    for mailbox in unit.mailboxes:
        try:
            return reply_address(mailbox.username, token)
        except ValueError:
            continue
    return None


def compose_for_unit(
    config: Config,
    unit: UnitSettings,
    mail: RenderedMail,
    *,
    recipients: Sequence[str],
    token_kind: str,
    now: dt.datetime,
    attachments: Sequence[Attachment] = (),
) -> bytes:
    """``mail`` as SMTP-ready bytes to ``recipients``, carrying a fresh token for ``unit``."""
    smtp = smtp_settings(config)
    token = make_token(unit.id, key=token_key(config), issued=now, kind=token_kind)
    reply_to = unit_reply_to(unit, token)
    if reply_to is None:
        log.warning(
            "unit %s has no mailbox address for Reply-To; replies go to the sender", unit.id
        )
    return compose(
        sender=smtp.sender,
        to=list(recipients),
        subject=mail.subject,
        text=mail.text,
        html=mail.html,
        reply_to=reply_to,
        message_id=token_message_id(token, _domain(smtp.sender), nonce=new_nonce()),
        auto_submitted="auto-generated",
        attachments=attachments,
        date=now,
    )
