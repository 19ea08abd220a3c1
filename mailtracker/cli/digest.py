"""``mailtracker digest --unit ID [--dry-run] [--date D] [--html FILE]``: one unit's digest."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from mailtracker.cli.common import config_from_args
from mailtracker.cli.db import open_configured
from mailtracker.config import ConfigError
from mailtracker.domain.workflow import local_day
from mailtracker.services.digest import DigestService


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "digest",
        help="build a unit's digest and queue it (with --dry-run: print it instead)",
        description=(
            "Build the digest of one unit and queue it for sending, recorded so that it is "
            "sent once for that date. With --dry-run, print the text part (and write the HTML "
            "part to --html FILE) and neither send nor record anything."
        ),
    )
    parser.add_argument("--unit", metavar="ID", required=True, help="the unit")
    parser.add_argument("--dry-run", action="store_true", help="print; send and record nothing")
    parser.add_argument(
        "--date",
        type=_date,
        metavar="YYYY-MM-DD",
        help="the digest's date (default: today in tracker.timezone)",
    )
    parser.add_argument("--html", type=Path, metavar="FILE", help="write the HTML part here")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        unit = config.unit(args.unit)
    except ConfigError as error:
        print(f"mailtracker: {error}", file=sys.stderr)
        return 2
    now = dt.datetime.now(dt.UTC)
    day: dt.date = args.date or local_day(now, config.tracker.timezone)
    database = open_configured(config)
    try:
        service = DigestService(config, database)
        if not args.dry_run:
            queued = service.send(unit.id, day, now)
            if queued:
                print(f"digest of {unit.id} for {day} queued (mailtracker outbox --flush sends it)")
                return 0
            print(
                f"mailtracker: no digest queued for {unit.id} on {day} (already sent, or no "
                "digest_to)",
                file=sys.stderr,
            )
            return 1
        with database.session(read_only=True) as session:
            built = service.build(session, unit.id, day, now)
    except ConfigError as error:
        print(f"mailtracker: {error}", file=sys.stderr)
        return 2
    finally:
        database.dispose()
    print(f"Subject: {built.subject}\n")
    sys.stdout.write(built.text)
    if args.html is not None:
        try:
            args.html.write_text(built.html, encoding="utf-8")
        except OSError as error:
            print(f"mailtracker: cannot write {args.html}: {error.strerror}", file=sys.stderr)
            return 1
    return 0
