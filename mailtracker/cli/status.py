"""``mailtracker status [--json]``: mailboxes, outbox, quarantine, next digests; a health check."""

from __future__ import annotations

import argparse
import datetime as dt
from zoneinfo import ZoneInfo

from mailtracker.cli.common import config_from_args, print_json
from mailtracker.cli.db import open_configured
from mailtracker.services.status import Status, collect_status, status_json


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="health of mailboxes, outbox and digests (exit 1 when something is stale)",
        description=(
            "Show, per mailbox, the last successful poll, the last error, the position "
            "(UIDVALIDITY/last UID) and the daemon instance polling it; the outbox queue; the "
            "quarantined mail; the next digest of each unit. Exit status 1 when a mailbox has "
            "had no successful poll for more than 3 x poll_every + 5 minutes, when its last "
            "poll failed, or when outgoing mail failed for good: usable as a health check."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    parser.set_defaults(handler=run)


def _when(value: dt.datetime | None, tz: ZoneInfo) -> str:
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S") if value is not None else "never"


def render(status: Status, tz: ZoneInfo) -> str:
    """The status as readable text."""
    lines = ["mailboxes:"]
    for box in status.mailboxes:
        position = (
            f"UIDVALIDITY {box.uidvalidity}, last UID {box.last_uid}"
            if box.uidvalidity is not None
            else "no position yet"
        )
        lines.append(f"  {box.name}  [{'STALE' if box.problem else 'ok'}]")
        lines.append(f"    last success: {_when(box.last_success_at, tz)}; {position}")
        if box.last_error is not None:
            lines.append(f"    last error:   {_when(box.last_error_at, tz)}  {box.last_error}")
        if box.polled_by is not None:
            until = _when(box.lease_expires_at, tz)
            lines.append(f"    polled by:    {box.polled_by} (lease until {until})")
    if not status.mailboxes:
        lines.append("  (none configured)")
    outbox = status.outbox
    lines.append(
        f"outbox: {outbox.queued} queued ({outbox.due} due now, {outbox.retrying} retrying), "
        f"{outbox.failed} failed"
        + (f"; oldest due since {_when(outbox.oldest_due_at, tz)}" if outbox.oldest_due_at else "")
    )
    lines.append(f"quarantined mail: {status.quarantined}")
    lines.append("next digests:")
    for digest in status.digests:
        last = digest.last_date.isoformat() if digest.last_date else "never"
        late = "  LATE (will be sent late, once)" if digest.late else ""
        lines.append(
            f"  {digest.unit_id}: {_when(digest.next_at, tz)} (last sent for {last}, "
            f"{digest.recipients} recipient(s)){late}"
        )
    if status.problems:
        lines.append("problems:")
        lines.extend(f"  {problem}" for problem in status.problems)
    else:
        lines.append("healthy")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    tz = config.tracker.timezone
    database = open_configured(config)
    try:
        with database.session(read_only=True) as session:
            status = collect_status(session, config, dt.datetime.now(dt.UTC))
    finally:
        database.dispose()
    if args.json:
        print_json(status_json(status, tz))
    else:
        print(render(status, tz))
    return 0 if status.healthy else 1
