"""``mailtracker purge [--dry-run] [--days N]``: delete personal data past the retention period."""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from mailtracker.cli.common import config_from_args
from mailtracker.cli.db import open_configured
from mailtracker.services.retention import purge


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "purge",
        help="delete personal data of cases closed longer ago than retention_days",
        description=(
            "Empty the personal fields of cases closed longer ago than tracker.retention_days "
            "and delete the raw mail they came from, keeping their anonymous history. The "
            "daemon does this once a day when retention_days is set."
        ),
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="count what would be purged, change nothing"
    )
    parser.add_argument(
        "--days", type=int, metavar="N", help="retention period in days (default: retention_days)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    days = args.days if args.days is not None else config.tracker.retention_days
    if days is None or days < 1:
        print(
            "mailtracker: no retention period: set tracker.retention_days or pass --days N (>= 1)",
            file=sys.stderr,
        )
        return 2
    database = open_configured(config)
    try:
        result = purge(
            database, config, now=dt.datetime.now(dt.UTC), days=days, dry_run=args.dry_run
        )
    finally:
        database.dispose()
    verb = "would purge" if args.dry_run else "purged"
    print(
        f"{verb} (older than {days} days): {result.cases} case(s), {result.messages} stored "
        f"message(s), {result.outgoing} outgoing message(s), {result.reply_log} reply log line(s)"
    )
    return 0
