"""Urgent alerts: a high-risk report or a follow-up with symptoms, mailed at once to the
owning unit's ``digest_to``.

An alert is queued in the caller's transaction under the dedup key ``alert:<ref>:<event>``, so
each case gets one alert per event however often the trigger is seen.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailtracker.config import Config, ConfigError
from mailtracker.domain.notices import AlertModel
from mailtracker.mail.outbox import enqueue
from mailtracker.render import render_alert
from mailtracker.services.outgoing import ALERT_TOKEN, compose_for_unit
from mailtracker.store.models import Case, Followup, Message, OutboxMessage

log = logging.getLogger(__name__)

AlertReason = Literal["high_risk", "symptoms"]
HIGH_RISK_EVENT = "high_risk"
HIGH_RISK_WINDOW = dt.timedelta(hours=24)
"""High-risk cases reported longer ago than this are not alerted by the sweep (a backfill
of old mail must not page anyone)."""


def can_alert(config: Config) -> bool:
    """Whether alerts can be composed at all: an ``[smtp]`` section and a ``secret_key``."""
    return config.smtp is not None and config.tracker.secret_key is not None


def alert_key(case_ref: str, event_key: str) -> str:
    """The outbox dedup key of the alert about ``case_ref`` for ``event_key``."""
    return f"alert:{case_ref}:{event_key}"


def queue_case_alert(
    session: Session,
    config: Config,
    case_ref: str,
    reason: AlertReason,
    event_key: str,
    now: dt.datetime,
) -> bool:
    """Queue an urgent alert about ``case_ref`` to its owning unit, once per ``event_key``.

    False when it was queued before, or cannot be sent (unknown case or owning unit, no
    ``digest_to``); the reason is logged.
    """
    case = session.scalar(select(Case).where(Case.ref == case_ref))
    if case is None:
        log.warning("alert for unknown case %s not queued", case_ref)
        return False
    try:
        unit = config.unit(case.owner_unit)
    except ConfigError:
        log.warning("alert for %s not queued: unit %s is not configured", case_ref, case.owner_unit)
        return False
    if not unit.digest_to:
        log.warning("alert for %s not queued: unit %s has no digest_to", case_ref, unit.id)
        return False
    tz = config.tracker.timezone
    followup = _latest_symptoms(session, case) if reason == "symptoms" else None
    observer = unit.role == "observer"
    model = AlertModel(
        unit_name=unit.name,
        language=unit.language,
        ref=case_ref,
        reason=reason,
        status=case.status,  # type: ignore[arg-type]
        at=(followup.at if followup is not None else case.received_at).astimezone(tz),
        full_name=None if observer else case.full_name,
        phone=None if observer else case.phone,
        commune=None if observer else case.commune,
        symptoms=() if observer else tuple(case.symptoms or ()),
        came_from=None if observer else case.came_from,
        contact=None if observer else case.contact,
        temperature=followup.temperature if followup is not None else None,
        note=None if observer or followup is None else followup.note,
        deadline=_deadline(case, tz),
    )
    raw = compose_for_unit(
        config,
        unit,
        render_alert(model, prefix=config.tracker.case_prefix),
        recipients=unit.digest_to,
        token_kind=ALERT_TOKEN,
        now=now,
    )
    queued = enqueue(
        session,
        dedup_key=alert_key(case_ref, event_key),
        recipients=list(unit.digest_to),
        raw=raw,
        now=now,
    )
    if queued:
        log.info("alert (%s) for %s queued to unit %s", reason, case_ref, unit.id)
    return queued


def queue_followup_alert(session: Session, config: Config, case_ref: str, now: dt.datetime) -> bool:
    """Alert the owning unit of a follow-up with symptoms just recorded on ``case_ref``
    (one alert per follow-up)."""
    case = session.scalar(select(Case).where(Case.ref == case_ref))
    if case is None:
        log.warning("alert for unknown case %s not queued", case_ref)
        return False
    followup = _latest_symptoms(session, case)
    event = f"followup-{followup.id}" if followup is not None else f"followup-{now:%Y%m%dT%H%M%S}"
    return queue_case_alert(session, config, case_ref, "symptoms", event, now)


def queue_high_risk_alerts(
    session: Session, config: Config, now: dt.datetime, *, window: dt.timedelta = HIGH_RISK_WINDOW
) -> list[str]:
    """Queue the alert of every open high-risk case opened and reported within ``window``
    that has none yet; the references alerted. Safe to call as often as wanted."""
    if not can_alert(config):
        return []
    since = now - window
    candidates = session.scalars(
        select(Case.ref).where(
            Case.risk == "high",
            Case.status != "closed",
            Case.ref.is_not(None),
            Case.created_at > since,
            Case.received_at > since,
        )
    ).all()
    refs = [ref for ref in candidates if ref is not None]
    if not refs:
        return []
    keys = {alert_key(ref, HIGH_RISK_EVENT): ref for ref in refs}
    done = set(
        session.scalars(select(OutboxMessage.dedup_key).where(OutboxMessage.dedup_key.in_(keys)))
    )
    return [
        ref
        for key, ref in keys.items()
        if key not in done
        and queue_case_alert(session, config, ref, "high_risk", HIGH_RISK_EVENT, now)
    ]


class HighRiskAlerter:
    """The ``Ingestor`` case hook: queues the alert of a high-risk case in the very
    transaction that opens or updates it (the sweep stays as the safety net)."""

    def __init__(self, config: Config, *, window: dt.timedelta = HIGH_RISK_WINDOW) -> None:
        self.config = config
        self.window = window

    def __call__(
        self, session: Session, case: Case, message: Message, created: bool, now: dt.datetime
    ) -> None:
        if (
            can_alert(self.config)
            and case.risk == "high"
            and case.status != "closed"
            and case.ref is not None
            and case.received_at > now - self.window
        ):
            queue_case_alert(session, self.config, case.ref, "high_risk", HIGH_RISK_EVENT, now)


def _latest_symptoms(session: Session, case: Case) -> Followup | None:
    followup: Followup | None = session.scalar(
        select(Followup)
        .where(Followup.case_id == case.id, Followup.result == "symptoms")
        .order_by(Followup.at.desc(), Followup.id.desc())
        .limit(1)
    )
    return followup


def _deadline(case: Case, tz: dt.tzinfo) -> dt.datetime | None:
    due = case.verify_by if case.status == "new" else case.next_followup_due
    return due.astimezone(tz) if due is not None else None
