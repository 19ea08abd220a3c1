"""Mail loops: is a message automatic, and may one more acknowledgement go to a sender (pure).

Automatic mail never gets an acknowledgement and never changes a case, so two robots (the
tracker and an out-of-office responder, or two trackers) cannot answer each other forever.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable
from email.utils import getaddresses
from typing import Literal

from mailtracker.mail.compose import LOOP_HEADER

ACK_LIMIT = 10
ACK_WINDOW = dt.timedelta(hours=1)

AutomaticReason = Literal[
    "auto_submitted",
    "autoreply_header",
    "precedence",
    "list_id",
    "null_return_path",
    "mailer_daemon",
    "delivery_status",
    "loop_header",
    "own_address",
]

_DAEMONS = frozenset({"mailer-daemon", "mailerdaemon", "mail-daemon", "postmaster"})
_ROBOT_PRECEDENCE = frozenset({"bulk", "junk", "list", "auto_reply"})
_AUTOREPLY_HEADERS = ("x-autoreply", "x-autorespond", "x-autoresponse")
_REPORT_TYPES = ("delivery-status", "disposition-notification")


def _headers(headers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in headers:
        found.setdefault(name.strip().lower(), []).append(str(value).strip())
    return found


def _first(found: dict[str, list[str]], name: str) -> str:
    values = found.get(name)
    return values[0] if values else ""


def _bare_addresses(values: list[str]) -> list[str]:
    return [address.strip().strip("<>").lower() for _, address in getaddresses(values) if address]


def is_automatic(
    headers: Iterable[tuple[str, str]], *, own_addresses: Collection[str] = ()
) -> AutomaticReason | None:
    """Why the message with these headers was sent by a machine, or None when by a person.

    ``headers`` are ``(name, value)`` pairs (``email.message.Message.items()``);
    ``own_addresses`` are the tracker's own sending addresses, bare.
    """
    found = _headers(headers)
    own = {address.strip().lower() for address in own_addresses}
    submitted = _first(found, "auto-submitted").split(";")[0].strip().lower()
    if submitted and submitted != "no":
        return "auto_submitted"
    if any(found.get(name) for name in _AUTOREPLY_HEADERS):
        return "autoreply_header"
    if _first(found, "precedence").lower() in _ROBOT_PRECEDENCE:
        return "precedence"
    if "list-id" in found:
        return "list_id"
    if any(value.replace(" ", "") == "<>" for value in found.get("return-path", [])):
        return "null_return_path"
    senders = _bare_addresses(found.get("from", []) + found.get("sender", []))
    if any(address.split("@")[0] in _DAEMONS for address in senders):
        return "mailer_daemon"
    content_type = _first(found, "content-type").lower()
    if content_type.startswith("message/delivery-status") or (
        content_type.startswith("multipart/report")
        and any(kind in content_type for kind in _REPORT_TYPES)
    ):
        return "delivery_status"
    if LOOP_HEADER.lower() in found:
        return "loop_header"
    loop_values = [value.lower() for value in found.get("x-loop", [])]
    if own and (own.intersection(senders) or any(a in v for v in loop_values for a in own)):
        return "own_address"
    return None


def ack_allowed(
    recent_acks: Iterable[dt.datetime],
    *,
    now: dt.datetime,
    limit: int = ACK_LIMIT,
    window: dt.timedelta = ACK_WINDOW,
) -> bool:
    """Whether one more acknowledgement may go to a sender who was sent ``recent_acks``
    (timestamps, aware): fewer than ``limit`` of them within ``window`` before ``now``."""
    since = now - window
    return sum(1 for sent in recent_acks if since < sent <= now) < limit
