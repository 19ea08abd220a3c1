"""Mailbox leases: each mailbox is polled by one instance at a time, however many run.

A lease is two columns of the mailbox's ``mailbox_state`` row: ``lease_owner`` and
``lease_expires_at``. It is taken and renewed by one conditional UPDATE in a transaction of its
own, which succeeds only when the lease is free, expired or already held by the caller: on
PostgreSQL the row lock and READ COMMITTED's re-check of the WHERE clause, on SQLite
``BEGIN IMMEDIATE``, let exactly one instance win. The holder renews it every third of its
duration and releases it on a clean stop; a holder that dies stops renewing, and another
instance takes the mailbox over once the lease has expired. An instance on the same machine
does not wait for that: a lease whose owner is a process of this machine that no longer exists
(killed, crashed) is taken over at once, so a restart after a crash resumes polling at once.

Expiry is read against each instance's own clock: the machines running instances must keep
their clocks in sync (NTP); a skew shortens or lengthens the lease by as much.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailtracker.clock import Clock, utc_now
from mailtracker.config import MailboxSettings
from mailtracker.store.db import Database
from mailtracker.store.models import MailboxState

log = logging.getLogger(__name__)

DEFAULT_LEASE = dt.timedelta(seconds=60)
OWNER_LENGTH = 255
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
PID_NAMESPACE = Path("/proc/self/ns/pid")

LeaseFactory = Callable[[MailboxSettings], "MailboxLease"]


class LeaseLost(Exception):
    """Another instance holds the lease now: this one must stop touching the mailbox."""


def machine_id() -> str:
    """This machine as lease owners name it: the host name and, on Linux, the boot id and the
    process-id namespace, so that a process id is only ever looked up among the processes it
    belongs to (not those of another container or of the system before a reboot)."""
    parts = [socket.gethostname().replace(":", "-")]
    try:
        parts.append(BOOT_ID.read_text().strip()[:8])
        parts.append("".join(filter(str.isdigit, os.readlink(PID_NAMESPACE))))
    except OSError:
        pass
    return "/".join(parts)


def instance_id() -> str:
    """A name for this process among the instances: machine, process id and a random part."""
    return f"{machine_id()}:{os.getpid()}:{secrets.token_hex(4)}"[-OWNER_LENGTH:]


def is_gone_local_process(owner: str) -> bool:
    """Whether ``owner`` names a process of this machine that no longer runs."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or parts[0] != machine_id():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, under another user
        return False
    return False


class MailboxLease:
    """The lease of one mailbox for one owner.

    ``acquire()`` takes or renews it; ``keep()`` renews it when a third of ``duration`` has
    passed and raises :class:`LeaseLost` when it is gone; ``release()`` gives it up.
    """

    def __init__(
        self,
        db: Database,
        mailbox: str,
        owner: str,
        *,
        duration: dt.timedelta = DEFAULT_LEASE,
        clock: Clock = utc_now,
    ) -> None:
        if duration <= dt.timedelta(0):
            raise ValueError("a lease needs a positive duration")
        self.db = db
        self.mailbox = mailbox
        self.owner = owner
        self.duration = duration
        self.clock = clock
        self.held = False
        self._renewed_at = 0.0  # monotonic time of the last successful acquire

    @property
    def renew_every(self) -> float:
        """Seconds between renewals; also how often an instance without it asks again."""
        return self.duration.total_seconds() / 3

    def acquire(self) -> bool:
        """Take the lease, or renew it when held; whether this owner holds it now."""
        started = time.monotonic()
        now = self.clock()
        with self.db.session() as session:
            if session.get(MailboxState, self.mailbox) is None:
                state = MailboxState(mailbox=self.mailbox, uidvalidity=None, last_uid=0)
                try:
                    with session.begin_nested():
                        session.add(state)
                except IntegrityError:
                    pass  # created meanwhile by another instance
            result = session.execute(
                update(MailboxState)
                .where(
                    MailboxState.mailbox == self.mailbox,
                    or_(
                        MailboxState.lease_owner.is_(None),
                        MailboxState.lease_owner == self.owner,
                        MailboxState.lease_expires_at.is_(None),
                        MailboxState.lease_expires_at <= now,
                    ),
                )
                .values(lease_owner=self.owner, lease_expires_at=now + self.duration)
                .execution_options(synchronize_session=False)
            )
            held: bool = result.rowcount == 1  # type: ignore[attr-defined]
            if not held:
                held = self._take_from_gone_process(session, now)
        if held:
            self._renewed_at = started
        self.held = held
        return held

    def _take_from_gone_process(self, session: Session, now: dt.datetime) -> bool:
        """Take the lease over from a process of this machine that died holding it."""
        owner = session.scalar(
            select(MailboxState.lease_owner).where(MailboxState.mailbox == self.mailbox)
        )
        if owner is None or owner == self.owner or not is_gone_local_process(owner):
            return False
        result = session.execute(
            update(MailboxState)
            .where(MailboxState.mailbox == self.mailbox, MailboxState.lease_owner == owner)
            .values(lease_owner=self.owner, lease_expires_at=now + self.duration)
            .execution_options(synchronize_session=False)
        )
        taken: bool = result.rowcount == 1  # type: ignore[attr-defined]
        if taken:
            log.info("%s: lease of stopped instance %s taken over", self.mailbox, owner)
        return taken

    def keep(self) -> None:
        """Renew the lease when due; :class:`LeaseLost` when another instance has it."""
        if self.held and time.monotonic() - self._renewed_at < self.renew_every:
            return
        if not self.acquire():
            raise LeaseLost(f"{self.mailbox}: the lease is held by another instance")

    def release(self) -> None:
        """Give the lease up (when this owner holds it), so another instance need not wait
        for it to expire."""
        with self.db.session() as session:
            session.execute(
                update(MailboxState)
                .where(MailboxState.mailbox == self.mailbox, MailboxState.lease_owner == self.owner)
                .values(lease_owner=None, lease_expires_at=None)
                .execution_options(synchronize_session=False)
            )
        self.held = False

    def holder(self) -> tuple[str | None, dt.datetime | None]:
        """Who holds the lease, and until when, as recorded in the database."""
        with self.db.session(read_only=True) as session:
            state = session.get(MailboxState, self.mailbox)
            if state is None:
                return None, None
            return state.lease_owner, state.lease_expires_at


def lease_factory(
    db: Database, *, duration: dt.timedelta = DEFAULT_LEASE, owner: str | None = None
) -> LeaseFactory:
    """Leases of this process (``owner``, by default a new :func:`instance_id`) on any
    mailbox, for :func:`mailtracker.mail.imap.start_pollers` and ``poll_all_once``."""
    name = owner if owner is not None else instance_id()

    def lease_for(settings: MailboxSettings) -> MailboxLease:
        return MailboxLease(db, settings.name, name, duration=duration)

    return lease_for
