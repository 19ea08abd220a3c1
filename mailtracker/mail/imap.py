"""The IMAP poller: fetches new mail from each configured mailbox into the database.

Position is tracked per mailbox as (UIDVALIDITY, last UID). Messages are read with
``BODY.PEEK[]`` (flags untouched, nothing ever deleted) from a read-only SELECT, in batches; each
batch is committed with the advanced position in one transaction by the ingestor, so a crash
loses nothing and repeats nothing. A changed UIDVALIDITY rescans the folder from UID 1 and relies
on the ingestor's Message-ID + content-hash dedupe.

With several instances, each mailbox is polled by the one holding its lease
(:mod:`mailtracker.mail.lease`): the others wait and ask again every third of the lease; the
holder renews it while it works and waits, and stops touching the mailbox as soon as it is gone.

Logs name mailboxes, counts and UIDs only; never anything read from a message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import imaplib
import logging
import random
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from imapclient import IMAPClient

from mailtracker.clock import Clock, utc_now
from mailtracker.config import Config, ConfigError, MailboxSettings, Secret
from mailtracker.mail.lease import LeaseFactory, LeaseLost, MailboxLease
from mailtracker.parsing.pool import ParsePool

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 500
DEFAULT_TIMEOUT = 60.0
IDLE_RENEW_SECONDS = 9 * 60.0
"""IDLE is restarted at least this often (servers may drop an IDLE older than 30 minutes,
and some NAT boxes far sooner; RFC 2177 asks for at most 29)."""
IDLE_CHECK_SECONDS = 0.5
"""How long one wait for IDLE responses lasts: the bound on noticing a stop request."""
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0
MAX_ERROR_LENGTH = 300


class Ingestor(Protocol):
    """What the poller needs of :class:`mailtracker.services.ingest.Ingestor`."""

    def position(self, mailbox: str) -> tuple[int | None, int]: ...

    def store_batch(
        self,
        mailbox: MailboxSettings,
        uidvalidity: int,
        messages: Sequence[tuple[int, bytes]],
        *,
        now: dt.datetime,
        parsers: ParsePool | None = None,
    ) -> int: ...

    def parsing(self, backlog: int) -> AbstractContextManager[ParsePool | None]: ...

    def process_pending(
        self,
        *,
        now: dt.datetime,
        limit: int | None = None,
        parsers: ParsePool | None = None,
        stop: threading.Event | None = None,
    ) -> object: ...

    def record_poll(self, mailbox: str, *, now: dt.datetime, error: str | None) -> None: ...


class ImapError(Exception):
    """The server answered something the poller cannot work with (no UIDVALIDITY, BYE...)."""


def describe_error(error: BaseException) -> str:
    """A one-line account of ``error`` safe to log and store: network, IMAP and configuration
    errors keep their message (it holds no message content); anything else, whose text may quote
    data (a database error quotes its parameters), is reduced to its type."""
    if isinstance(error, OSError | imaplib.IMAP4.error | ImapError | ConfigError):
        text = " ".join(str(error).split()) or "no details"
        return f"{type(error).__name__}: {text}"[:MAX_ERROR_LENGTH]
    return f"{type(error).__name__} (details at DEBUG level)"


def backoff_delay(
    failures: int,
    *,
    base: float = BACKOFF_BASE_SECONDS,
    cap: float = BACKOFF_CAP_SECONDS,
    rng: random.Random | None = None,
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(failures-1))]."""
    ceiling = min(cap, base * 2.0 ** max(0, min(failures - 1, 62)))
    return (rng or random).uniform(0.0, ceiling)


def _reveal(secret: Secret | None, what: str, settings: MailboxSettings) -> str:
    if secret is None:
        raise ConfigError(f"mailbox {settings.name}: no {what} configured")
    return secret.reveal()


def connect(settings: MailboxSettings, *, timeout: float = DEFAULT_TIMEOUT) -> IMAPClient:
    """Open a logged-in session (TLS as configured; app password or XOAUTH2)."""
    context = ssl.create_default_context()
    client = IMAPClient(
        settings.host,
        port=settings.port,
        ssl=settings.security == "ssl",
        ssl_context=context,
        timeout=timeout,
    )
    try:
        if settings.security == "starttls":
            client.starttls(context)
        if settings.auth == "xoauth2":
            client.oauth2_login(
                settings.username, _reveal(settings.oauth2_token, "oauth2_token", settings)
            )
        else:
            client.login(settings.username, _reveal(settings.password, "password", settings))
    except BaseException:
        with contextlib.suppress(Exception):
            client.shutdown()
        raise
    return client


def select_readonly(client: IMAPClient, folder: str) -> int:
    """SELECT ``folder`` read-only (EXAMINE) and return its UIDVALIDITY."""
    response = client.select_folder(folder, readonly=True)
    uidvalidity = response.get(b"UIDVALIDITY")
    if not isinstance(uidvalidity, int):
        raise ImapError(f"the server gave no UIDVALIDITY for folder {folder!r}")
    return uidvalidity


def close(client: IMAPClient) -> None:
    """Log out, or just drop the socket when the session is already broken."""
    try:
        client.logout()
    except Exception:
        with contextlib.suppress(Exception):
            client.shutdown()


def _batches(uids: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(uids), size):
        yield uids[start : start + size]


class MailboxPoller:
    """Polls one mailbox: ``poll_once()`` for a single pass, ``run(stop)`` for the long run."""

    def __init__(
        self,
        settings: MailboxSettings,
        ingestor: Ingestor,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Clock = utc_now,
        backoff_base: float = BACKOFF_BASE_SECONDS,
        backoff_cap: float = BACKOFF_CAP_SECONDS,
        lease: MailboxLease | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.settings = settings
        self.ingestor = ingestor
        self.batch_size = batch_size
        self.timeout = timeout
        self.clock = clock
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.lease = lease
        self.failures = 0

    @property
    def name(self) -> str:
        return self.settings.name

    # -- one pass --------------------------------------------------------------------------

    def poll_once(self) -> int:
        """Connect, fetch what is new, process it, disconnect; the number of messages stored.

        A failure is recorded against the mailbox and raised again (losing the lease, raised
        as :class:`LeaseLost`, is no failure of the mailbox).
        """
        try:
            client = connect(self.settings, timeout=self.timeout)
            try:
                return self.sync(client)
            finally:
                close(client)
        except LeaseLost:
            raise
        except Exception as error:
            self._record_failure(error)
            raise

    def sync(self, client: IMAPClient, stop: threading.Event | None = None) -> int:
        """Fetch every message above the stored position over an open session, batch by batch,
        then process what was stored and record the successful poll."""
        uidvalidity = select_readonly(client, self.settings.folder)
        self._keep_lease()
        stored_validity, last_uid = self.ingestor.position(self.name)
        if stored_validity is not None and stored_validity != uidvalidity:
            log.warning(
                "%s: UIDVALIDITY changed from %d to %d; rescanning the folder from UID 1",
                self.name,
                stored_validity,
                uidvalidity,
            )
        if stored_validity != uidvalidity:
            last_uid = 0
        # "UID n:*" always matches the newest message, even when its UID is below n.
        uids = sorted(uid for uid in client.search(["UID", f"{last_uid + 1}:*"]) if uid > last_uid)
        stored = 0
        with self.ingestor.parsing(len(uids)) as parsers:  # a backlog: parsed while fetched
            for batch in _batches(uids, self.batch_size):
                if stop is not None and stop.is_set():
                    break
                stored += self._fetch_and_store(client, uidvalidity, batch, parsers)
            if uids:
                log.info(
                    "%s: %d new of %d UID(s) %d-%d (UIDVALIDITY %d)",
                    self.name,
                    stored,
                    len(uids),
                    uids[0],
                    uids[-1],
                    uidvalidity,
                )
            else:
                log.debug("%s: nothing new above UID %d", self.name, last_uid)
            self.ingestor.process_pending(now=self.clock(), parsers=parsers, stop=stop)
        self.ingestor.record_poll(self.name, now=self.clock(), error=None)
        self.failures = 0
        return stored

    def _fetch_and_store(
        self,
        client: IMAPClient,
        uidvalidity: int,
        batch: Sequence[int],
        parsers: ParsePool | None,
    ) -> int:
        response = client.fetch(batch, [b"BODY.PEEK[]"])
        messages: list[tuple[int, bytes]] = []
        for uid in batch:
            body = response.get(uid, {}).get(b"BODY[]")
            if isinstance(body, bytes):
                messages.append((uid, body))
        if len(messages) < len(batch):
            fetched = {uid for uid, _ in messages}
            missing = [uid for uid in batch if uid not in fetched]
            log.warning(
                "%s: UID(s) %s not returned by FETCH (expunged meanwhile?)", self.name, missing
            )
        if not messages:
            return 0
        self._keep_lease()
        stored = self.ingestor.store_batch(
            self.settings, uidvalidity, messages, now=self.clock(), parsers=parsers
        )
        log.debug(
            "%s: batch UID %d-%d: %d fetched, %d new",
            self.name,
            messages[0][0],
            messages[-1][0],
            len(messages),
            stored,
        )
        return stored

    def _record_failure(self, error: BaseException) -> None:
        description = describe_error(error)
        log.debug("%s: poll failed", self.name, exc_info=error)
        try:
            self.ingestor.record_poll(self.name, now=self.clock(), error=description)
        except Exception as record_error:
            log.error(
                "%s: cannot record the failed poll: %s", self.name, describe_error(record_error)
            )

    # -- the long run ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set: IDLE where offered (else sleep), a sweep every
        ``poll_every``, and reconnection with exponential backoff after any failure.

        With a lease, only while holding it: without it, ask again every ``renew_every``
        seconds; losing it ends the session at once; a clean stop releases it.
        """
        log.info("%s: poller started", self.name)
        try:
            self._run(stop)
        finally:
            self.release_lease()
        log.info("%s: poller stopped", self.name)

    def _run(self, stop: threading.Event) -> None:
        waiting = False
        while not stop.is_set():
            if self.lease is not None:
                holds = self._take_lease(stop, waiting=waiting)
                if holds is None:
                    continue  # a database failure, already waited for
                waiting = not holds
                if waiting:
                    stop.wait(self.lease.renew_every)
                    continue
            try:
                self._session(stop)
            except LeaseLost:
                log.warning("%s: lease taken over by another instance; polling stops", self.name)
            except Exception as error:
                delay = self._next_delay()
                log.error(
                    "%s: %s; reconnecting in %.1fs (failure %d)",
                    self.name,
                    describe_error(error),
                    delay,
                    self.failures,
                )
                self._record_failure(error)
                stop.wait(delay)

    def _next_delay(self) -> float:
        """Count one more failure in a row; how long to wait before the next attempt."""
        self.failures += 1
        return backoff_delay(self.failures, base=self.backoff_base, cap=self.backoff_cap)

    def _take_lease(self, stop: threading.Event, *, waiting: bool) -> bool | None:
        """Try to take (or renew) the lease: whether it is held, None after a failure (logged,
        and waited for with backoff)."""
        assert self.lease is not None
        try:
            holds = self.lease.acquire()
        except Exception as error:
            delay = self._next_delay()
            log.error(
                "%s: cannot take the lease: %s; retrying in %.1fs",
                self.name,
                describe_error(error),
                delay,
            )
            stop.wait(delay)
            return None
        if holds and waiting:
            log.info("%s: lease taken; this instance polls the mailbox now", self.name)
        elif not holds and not waiting:
            owner, until = self.lease.holder()
            log.info(
                "%s: polled by instance %s (lease until %s); asking again every %.0fs",
                self.name,
                owner,
                until.isoformat(timespec="seconds") if until else "?",
                self.lease.renew_every,
            )
        return holds

    def _keep_lease(self) -> None:
        """Renew the lease when due; :class:`LeaseLost` once another instance holds it."""
        if self.lease is not None:
            self.lease.keep()

    def release_lease(self) -> None:
        """Give the lease up when held (it would expire on its own otherwise)."""
        if self.lease is None or not self.lease.held:
            return
        try:
            self.lease.release()
        except Exception as error:  # it expires on its own
            log.error("%s: cannot release the lease: %s", self.name, describe_error(error))
        else:
            log.info("%s: lease released", self.name)

    def _session(self, stop: threading.Event) -> None:
        """One connection: sync, then wait for news (IDLE or sleep) and sync again, until
        ``stop`` is set or the connection fails."""
        client = connect(self.settings, timeout=self.timeout)
        try:
            self.sync(client, stop)
            use_idle = self.settings.idle and client.has_capability("IDLE")
            log.info(
                "%s: connected; waiting with %s, sweep every %ds",
                self.name,
                "IDLE" if use_idle else "polling",
                int(self.settings.poll_every.total_seconds()),
            )
            while not stop.is_set():
                sweep_at = time.monotonic() + self.settings.poll_every.total_seconds()
                if use_idle:
                    self._idle(client, stop, sweep_at)
                else:
                    client.noop()
                    self._wait(stop, sweep_at)
                if not stop.is_set():
                    self.sync(client, stop)
        finally:
            close(client)

    def _wait(self, stop: threading.Event, until: float) -> None:
        """Sleep until ``until`` (monotonic) or ``stop``, renewing the lease meanwhile."""
        while not stop.is_set() and time.monotonic() < until:
            step = until - time.monotonic()
            if self.lease is not None:
                step = min(step, self.lease.renew_every)
            stop.wait(max(0.0, step))
            self._keep_lease()

    def _idle(self, client: IMAPClient, stop: threading.Event, until: float) -> None:
        """IDLE until new mail is announced, ``until`` (monotonic) passes, the IDLE is due for
        renewal or ``stop`` is set; the lease is renewed meanwhile.

        Mail that arrived during the last pass is not announced by an IDLE started after it:
        a NOOP first reports it, and the poller then syncs at once instead of idling.
        """
        renew_at = min(until, time.monotonic() + IDLE_RENEW_SECONDS)
        _, responses = client.noop()
        if any(_announces_mail(response) for response in responses):
            return
        client.idle()
        healthy = False
        try:
            while not stop.is_set() and time.monotonic() < renew_at:
                self._keep_lease()
                responses = client.idle_check(timeout=IDLE_CHECK_SECONDS)
                if any(_is_bye(response) for response in responses):
                    raise ImapError("the server closed the connection (BYE)")
                if any(_announces_mail(response) for response in responses):
                    break
            healthy = True
        finally:
            if healthy:
                client.idle_done()
            else:
                with contextlib.suppress(Exception):
                    client.idle_done()


def _is_bye(response: tuple[object, ...]) -> bool:
    return len(response) >= 1 and response[0] == b"BYE"


def _announces_mail(response: tuple[object, ...]) -> bool:
    return len(response) >= 2 and isinstance(response[0], int) and response[1] == b"EXISTS"


def poll_all_once(
    config: Config,
    ingestor: Ingestor,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    timeout: float = DEFAULT_TIMEOUT,
    lease_for: LeaseFactory | None = None,
) -> dict[str, str | None]:
    """One pass over every mailbox; maps each mailbox name to None (success) or its error.

    With ``lease_for``, a mailbox is read under its lease, and one that a running instance
    holds is left to it (and counts as a success).
    """
    results: dict[str, str | None] = {}
    for settings in config.mailboxes:
        lease = lease_for(settings) if lease_for is not None else None
        poller = MailboxPoller(
            settings, ingestor, batch_size=batch_size, timeout=timeout, lease=lease
        )
        results[settings.name] = None
        try:
            if lease is None or lease.acquire():
                poller.poll_once()
            else:
                log.info("%s: polled by instance %s; left to it", settings.name, lease.holder()[0])
        except LeaseLost:
            log.info("%s: taken over by another instance during the pass", settings.name)
        except Exception as error:
            results[settings.name] = describe_error(error)
            log.error("%s: poll failed: %s", settings.name, results[settings.name])
        finally:
            poller.release_lease()
    return results


def start_pollers(
    config: Config,
    ingestor: Ingestor,
    stop: threading.Event,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    timeout: float = DEFAULT_TIMEOUT,
    lease_for: LeaseFactory | None = None,
) -> list[threading.Thread]:
    """Start one daemon thread per mailbox running :meth:`MailboxPoller.run` until ``stop``;
    with ``lease_for``, each poller polls only while holding the lease it gives."""
    threads = []
    for settings in config.mailboxes:
        poller = MailboxPoller(
            settings,
            ingestor,
            batch_size=batch_size,
            timeout=timeout,
            lease=lease_for(settings) if lease_for is not None else None,
        )
        thread = threading.Thread(
            target=poller.run, args=(stop,), name=f"poll {settings.name}", daemon=True
        )
        thread.start()
        threads.append(thread)
    return threads
