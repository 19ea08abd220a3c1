"""Signed reply tokens: prove that a reply answers a message the tracker sent to a unit.

A token reads ``<kind>.<unit>.<body>``, e.g. ``d.cdc.k3v...`` where ``body`` is the lower-case
base32 of the issue minute (4 bytes) and an HMAC-SHA256 truncated to 88 bits. Only the
characters ``a-z 0-9 . - _`` occur, so it fits a plus-address local part and a Message-ID, and
it survives mail clients that change the case of addresses. Pure: no clock, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Literal

UNIT_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
"""Unit ids a token can carry (as config accepts): ``a-z 0-9 - _``, at most 32 characters."""

KIND_PATTERN = re.compile(r"[a-z]")
MAX_LOCAL_PART = 64

_MAC_BYTES = 11
_BODY_CHARS = 24  # base32 of 4 + 11 bytes, no padding needed
_DOMAIN_TAG = b"mailtracker-reply-token-v1"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_TOKEN = r"[a-z]\.[a-z0-9][a-z0-9_-]{0,31}\.[a-z2-7]{24}"
_TOKEN_RE = re.compile(_TOKEN)
_IN_ADDRESS = re.compile(r"\+t\.(" + _TOKEN + r")@")
_IN_MESSAGE_ID = re.compile(r"(?:^|[<\s])t\.(" + _TOKEN + r")(?:\.[a-z0-9]+)?@")

Reason = Literal["expired", "bad_signature", "malformed"]


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """The outcome of :func:`verify_token`; ``unit_id``/``issued`` are set once the token parses."""

    ok: bool
    reason: Reason | None
    unit_id: str | None = None
    kind: str | None = None
    issued: dt.datetime | None = None


def _mac(key: bytes, kind: str, unit_id: str, minute: bytes) -> bytes:
    message = b"|".join((_DOMAIN_TAG, kind.encode(), unit_id.encode(), minute))
    return hmac.new(key, message, hashlib.sha256).digest()[:_MAC_BYTES]


def make_token(unit_id: str, *, key: bytes, issued: dt.datetime, kind: str = "d") -> str:
    """A token naming ``unit_id``, issued at ``issued`` (timezone-aware; kept to the minute)."""
    if not key:
        raise ValueError("the token key is empty")
    if not UNIT_ID_PATTERN.fullmatch(unit_id):
        raise ValueError(f"unit id {unit_id!r} cannot be carried by a reply token")
    if not KIND_PATTERN.fullmatch(kind):
        raise ValueError(f"token kind {kind!r} must be one lower-case letter")
    if issued.tzinfo is None:
        raise ValueError("issued must be timezone-aware")
    minutes = int((issued - _EPOCH).total_seconds() // 60)
    if not 0 <= minutes < 2**32:
        raise ValueError("issued is out of range")
    minute = minutes.to_bytes(4, "big")
    raw = minute + _mac(key, kind, unit_id, minute)
    body = base64.b32encode(raw).decode("ascii").lower()
    return f"{kind}.{unit_id}.{body}"


def verify_token(token: str, *, key: bytes, now: dt.datetime, max_age: dt.timedelta) -> TokenCheck:
    """Check the signature first, then the age; the token is read case-insensitively."""
    token = token.strip().lower()
    if not _TOKEN_RE.fullmatch(token):
        return TokenCheck(ok=False, reason="malformed")
    kind, unit_id, body = token.split(".")
    try:
        raw = base64.b32decode(body.upper())
    except (binascii.Error, ValueError):
        return TokenCheck(ok=False, reason="malformed")
    minute, mac = raw[:4], raw[4:]
    if not key or not hmac.compare_digest(mac, _mac(key, kind, unit_id, minute)):
        return TokenCheck(ok=False, reason="bad_signature")
    issued = _EPOCH + dt.timedelta(minutes=int.from_bytes(minute, "big"))
    expired = now - issued > max_age
    return TokenCheck(
        ok=not expired,
        reason="expired" if expired else None,
        unit_id=unit_id,
        kind=kind,
        issued=issued,
    )


def reply_address(mailbox_address: str, token: str) -> str:
    """``local+t.<token>@domain`` for the mailbox; the bare mailbox when that would exceed the
    64-character local-part limit (the token then travels in the Message-ID alone)."""
    address = parseaddr(mailbox_address)[1]
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"not a mailbox address: {mailbox_address!r}")
    plus = f"{local.split('+', 1)[0]}+t.{token}"
    return address if len(plus) > MAX_LOCAL_PART else f"{plus}@{domain}"


def token_message_id(token: str, domain: str, *, nonce: str) -> str:
    """A Message-ID ``<t.<token>.<nonce>@domain>``: ``nonce`` (letters and digits) keeps two
    messages carrying the same token distinct."""
    if not re.fullmatch(r"[a-z0-9]+", nonce):
        raise ValueError("the Message-ID nonce must be lower-case letters and digits")
    if not re.fullmatch(r"[A-Za-z0-9.-]+", domain):
        raise ValueError(f"not a domain: {domain!r}")
    return f"<t.{token}.{nonce}@{domain}>"


def find_token(addresses: Iterable[str], message_ids: Iterable[str]) -> str | None:
    """The first token candidate in recipient plus-addresses, then in Message-IDs (pass
    In-Reply-To before References; a whole References header is accepted too).
    Unverified: check it with :func:`verify_token`."""
    for address in addresses:
        match = _IN_ADDRESS.search(parseaddr(address)[1].lower())
        if match:
            return match.group(1)
    for message_id in message_ids:
        match = _IN_MESSAGE_ID.search(message_id.lower())
        if match:
            return match.group(1)
    return None
