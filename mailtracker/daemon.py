"""The long-running service: mailbox pollers, daily digests, urgent alerts, the outbox flusher.

Wiring (APScheduler 3, ``BackgroundScheduler`` in ``tracker.timezone``):

- one thread per mailbox running :meth:`MailboxPoller.run` until the stop event is set, polling
  only while it holds the mailbox's lease (``tracker.mailbox_lease``), so that with several
  instances on one database each mailbox is polled by one of them at a time;
- one cron job per unit at its ``digest_at``, with hours of misfire grace, ``coalesce`` and
  ``max_instances=1``; each sent digest is recorded in the database, so it goes out once;
- a catch-up at start-up: a unit whose ``digest_at`` has passed today without a recorded
  digest gets it now (late, once);
- the outbox flusher every few seconds, and at once after something was queued;
- a sweep that processes stored messages left unprocessed and queues missing high-risk alerts;
- with ``tracker.retention_days``, a daily purge of personal data past that period.

A failing job is logged (type only at INFO and above; details at DEBUG) and the daemon carries
on. Logs carry unit ids, counts and case references, never personal data.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from mailtracker.clock import Clock, utc_now
from mailtracker.config import Config
from mailtracker.domain.workflow import local_day
from mailtracker.mail.imap import describe_error, start_pollers
from mailtracker.mail.lease import instance_id, lease_factory
from mailtracker.mail.outbox import OutboxSender
from mailtracker.services.alerts import HighRiskAlerter, queue_high_risk_alerts
from mailtracker.services.digest import DigestService, digest_recorded
from mailtracker.services.ingest import Ingestor, ProcessResult, ReplyHandler
from mailtracker.services.replies import ReplyService
from mailtracker.services.retention import purge
from mailtracker.store.db import Database

log = logging.getLogger(__name__)


DIGEST_GRACE = dt.timedelta(hours=6)
FLUSH_EVERY = dt.timedelta(seconds=5)
SWEEP_EVERY = dt.timedelta(seconds=60)
THREAD_JOIN_SECONDS = 5.0
OUTBOX_JOB = "outbox"
SWEEP_JOB = "sweep"
CATCH_UP_JOB = "digest-catch-up"
RETENTION_JOB = "retention"
RETENTION_EVERY = dt.timedelta(days=1)


def digest_day(now: dt.datetime, digest_at: dt.time, tz: dt.tzinfo) -> dt.date:
    """The local date of the latest ``digest_at`` at or before ``now`` (a run that starts
    late, after midnight, still belongs to the day before)."""
    local = now.astimezone(tz)
    return local.date() if local.time() >= digest_at else local.date() - dt.timedelta(days=1)


class AlertingIngestor(Ingestor):
    """The ingestor, alerting on high-risk cases and calling ``after_processing`` once each
    processing pass is committed (a failure of it is logged, never raised: alert trouble
    never stops the polling)."""

    def __init__(
        self,
        db: Database,
        config: Config,
        after_processing: Callable[[dt.datetime, ProcessResult], None],
        *,
        reply_handler: ReplyHandler | None = None,
    ) -> None:

        def logging_failures(now: dt.datetime, result: ProcessResult) -> None:
            try:
                after_processing(now, result)
            except Exception as error:
                log.error("after processing: %s", describe_error(error))
                log.debug("after processing failure", exc_info=error)

        super().__init__(
            db,
            config,
            reply_handler=reply_handler,
            case_handler=HighRiskAlerter(config),
            after_processing=logging_failures,
        )


class Daemon:
    """Everything ``mailtracker run`` runs; ``start`` returns at once, ``stop`` ends it all."""

    def __init__(
        self,
        config: Config,
        db: Database,
        *,
        clock: Clock = utc_now,
        reply_handler: ReplyHandler | None = None,
        digest_grace: dt.timedelta = DIGEST_GRACE,
        flush_every: dt.timedelta = FLUSH_EVERY,
        sweep_every: dt.timedelta = SWEEP_EVERY,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.clock = clock
        self.tz = config.tracker.timezone
        self.digest_grace = digest_grace
        self.flush_every = flush_every
        self.sweep_every = sweep_every
        self.stop_event = stop_event if stop_event is not None else threading.Event()
        self.ingestor = AlertingIngestor(
            db, config, self._after_processing, reply_handler=reply_handler
        )
        self.digests = DigestService(config, db)
        self.sender = OutboxSender(db, config.smtp) if config.smtp is not None else None
        self.scheduler = BackgroundScheduler(
            timezone=self.tz,
            job_defaults={"coalesce": True, "max_instances": 1},
        )
        self.scheduler.add_listener(self._job_failed, EVENT_JOB_ERROR | EVENT_JOB_MISSED)
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            # Its own error log prints exception text (which may quote data); ours does not.
            logging.getLogger("apscheduler.executors").setLevel(logging.CRITICAL)
        self.threads: list[threading.Thread] = []
        self.instance = instance_id()

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Schedule the jobs, start the scheduler and one poller thread per mailbox."""
        if self.sender is None:
            log.warning("no [smtp] section: digests and alerts stay queued in the outbox")
        now = self.clock()
        for unit in self.config.units:
            at = unit.digest_at
            self.scheduler.add_job(
                self.send_digest,
                CronTrigger(hour=at.hour, minute=at.minute, second=at.second, timezone=self.tz),
                args=[unit.id],
                id=f"digest:{unit.id}",
                name=f"digest {unit.id}",
                misfire_grace_time=int(self.digest_grace.total_seconds()),
            )
        self.scheduler.add_job(self.catch_up, id=CATCH_UP_JOB, name="digest catch-up")
        self.scheduler.add_job(
            self.flush_outbox,
            "interval",
            seconds=self.flush_every.total_seconds(),
            id=OUTBOX_JOB,
            name="outbox flush",
            next_run_time=now,
            misfire_grace_time=None,
        )
        self.scheduler.add_job(
            self.sweep,
            "interval",
            seconds=self.sweep_every.total_seconds(),
            id=SWEEP_JOB,
            name="processing sweep",
            next_run_time=now,
            misfire_grace_time=None,
        )
        if self.config.tracker.retention_days is not None:
            self.scheduler.add_job(
                self.purge_expired,
                "interval",
                seconds=RETENTION_EVERY.total_seconds(),
                id=RETENTION_JOB,
                name="retention purge",
                next_run_time=now,
                misfire_grace_time=None,
            )
        self.scheduler.start()
        self.threads = start_pollers(
            self.config,
            self.ingestor,
            self.stop_event,
            lease_for=lease_factory(
                self.db, duration=self.config.tracker.mailbox_lease, owner=self.instance
            ),
        )
        log.info(
            "daemon started: %d unit(s), %d mailbox(es), instance %s",
            len(self.config.units),
            len(self.config.mailboxes),
            self.instance,
        )

    def stop(self) -> None:
        """Stop the pollers and the scheduler without waiting for a running job to finish."""
        self.stop_event.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        for thread in self.threads:
            thread.join(timeout=THREAD_JOIN_SECONDS)
        log.info("daemon stopped")

    def wait(self) -> None:
        """Block until :meth:`stop` is called or the stop event is set from elsewhere."""
        while not self.stop_event.wait(0.5):
            pass

    # -- jobs ------------------------------------------------------------------------------------

    def send_digest(self, unit_id: str) -> bool:
        """The cron job of one unit: queue the digest of the latest ``digest_at`` day."""
        unit = self.config.unit(unit_id)
        now = self.clock()
        queued = self.digests.send(unit.id, digest_day(now, unit.digest_at, self.tz), now)
        if queued:
            self.flush_soon()
        return queued

    def catch_up(self) -> list[str]:
        """Send today's digest of every unit whose ``digest_at`` has passed without one;
        the ids of the units it was sent to."""
        now = self.clock()
        today = local_day(now, self.tz)
        sent = []
        for unit in self.config.units:
            if now.astimezone(self.tz).time() < unit.digest_at:
                continue
            with self.db.session(read_only=True) as session:
                if digest_recorded(session, unit.id, today):
                    continue
            log.info("digest of unit %s for %s was missed: sending it late", unit.id, today)
            if self.digests.send(unit.id, today, now):
                sent.append(unit.id)
        if sent:
            self.flush_soon()
        return sent

    def flush_outbox(self) -> None:
        """Send what is due in the outbox."""
        if self.sender is None:
            return
        result = self.sender.flush(self.clock())
        if result.sent or result.retrying or result.failed:
            log.info(
                "outbox: %d sent, %d to retry, %d failed",
                result.sent,
                result.retrying,
                result.failed,
            )

    def sweep(self) -> None:
        """Process stored messages still waiting (the pollers normally do it at once)."""
        self.ingestor.process_pending(now=self.clock(), stop=self.stop_event)

    def purge_expired(self) -> None:
        """Purge personal data past ``tracker.retention_days`` (once a day)."""
        purge(self.db, self.config, now=self.clock())

    def flush_soon(self) -> None:
        """Run the outbox flusher now rather than at its next interval."""
        with contextlib.suppress(JobLookupError):  # shutting down
            self.scheduler.modify_job(OUTBOX_JOB, next_run_time=dt.datetime.now(self.tz))

    # -- helpers ---------------------------------------------------------------------------------

    def _after_processing(self, now: dt.datetime, result: ProcessResult) -> None:
        """Queue the alerts of new high-risk cases; flush what processing queued (alerts,
        acknowledgements) at once."""
        with self.db.session() as session:
            alerted = queue_high_risk_alerts(session, self.config, now)
        if alerted or result.processed:
            self.flush_soon()

    def _job_failed(self, event: Any) -> None:
        if not isinstance(event, JobExecutionEvent):
            return
        if event.exception is None:
            log.warning("job %s missed its run time %s", event.job_id, event.scheduled_run_time)
            return
        log.error("job %s failed: %s", event.job_id, describe_error(event.exception))
        log.debug("job %s failure", event.job_id, exc_info=event.exception)


def run_daemon(config: Config, db: Database, stop: threading.Event) -> int:
    """Run until ``stop`` is set; the exit status."""
    daemon = Daemon(config, db, stop_event=stop, reply_handler=ReplyService(config))
    daemon.start()
    try:
        daemon.wait()
    finally:
        daemon.stop()
    return 0
