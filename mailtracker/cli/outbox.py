"""``mailtracker outbox [--flush]``: show outgoing mail still queued, failed or sent lately."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select

from mailtracker.cli.common import config_from_args
from mailtracker.cli.db import open_configured
from mailtracker.mail.outbox import OutboxSender
from mailtracker.store.db import Database
from mailtracker.store.models import OutboxMessage

SENT_RECENTLY = dt.timedelta(hours=24)
ERROR_WIDTH = 60
COLUMNS = ("id", "state", "dedup key", "to", "attempts", "next try", "last error")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "outbox",
        help="show queued outgoing mail (with --flush: send what is due)",
        description=(
            "List outgoing mail that is queued, failed, or sent in the last 24 hours. With "
            "--flush, first send what is due; the exit status is 1 when a message failed."
        ),
    )
    parser.add_argument("--flush", action="store_true", help="send what is due now")
    parser.set_defaults(handler=run)


def state(row: OutboxMessage) -> str:
    """``sent``, ``queued`` (waiting for its next try) or ``failed`` (given up)."""
    if row.sent_at is not None:
        return "sent"
    return "queued" if row.next_attempt_at is not None else "failed"


def _local(value: dt.datetime | None, tz: ZoneInfo) -> str:
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def table(database: Database, now: dt.datetime, tz: ZoneInfo) -> list[tuple[str, ...]]:
    """The rows shown: every unsent message and those sent within the last day."""
    query = (
        select(OutboxMessage)
        .where(or_(OutboxMessage.sent_at.is_(None), OutboxMessage.sent_at > now - SENT_RECENTLY))
        .order_by(OutboxMessage.id)
    )
    with database.session(read_only=True) as session:
        return [
            (
                str(row.id),
                state(row),
                row.dedup_key,
                str(len(row.recipients)),
                str(row.attempts),
                _local(row.next_attempt_at, tz),
                " ".join((row.last_error or "").split())[:ERROR_WIDTH],
            )
            for row in session.scalars(query)
        ]


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(cells[i]) for cells in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    for cells in [COLUMNS, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
        )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    tz = config.tracker.timezone
    database = open_configured(config)
    status = 0
    try:
        if args.flush:
            if config.smtp is None:
                print("mailtracker: no [smtp] section: nothing can be sent", file=sys.stderr)
                return 2
            result = OutboxSender(database, config.smtp).flush(dt.datetime.now(dt.UTC))
            print(f"sent {result.sent}, to retry {result.retrying}, failed {result.failed}")
            if result.error is not None:
                print(f"mailtracker: SMTP: {result.error}", file=sys.stderr)
            if result.retrying or result.failed or result.error is not None:
                status = 1
        rows = table(database, dt.datetime.now(dt.UTC), tz)
    finally:
        database.dispose()
    if rows:
        print_table(rows)
    else:
        print("the outbox is empty")
    return status
