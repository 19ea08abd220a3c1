"""``mailtracker poll [--once]``: fetch new mail from every configured mailbox."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from mailtracker.cli.common import config_from_args
from mailtracker.mail.imap import DEFAULT_BATCH_SIZE, poll_all_once, start_pollers
from mailtracker.mail.lease import lease_factory
from mailtracker.services.alerts import HighRiskAlerter
from mailtracker.services.ingest import Ingestor
from mailtracker.services.replies import ReplyService
from mailtracker.store.db import open_database


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "poll",
        help="fetch new mail from every mailbox (with --once: one pass, then exit)",
        description=(
            "Fetch new mail from every configured mailbox and turn it into cases. With --once, "
            "one pass then exit: 0 when every mailbox was read, 1 when one failed. Without it, "
            "keep polling (IDLE where offered) until interrupted."
        ),
    )
    parser.add_argument("--once", action="store_true", help="one pass over every mailbox")
    parser.add_argument(
        "--batch-size",
        type=_positive,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"messages fetched and committed together (default: {DEFAULT_BATCH_SIZE})",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if not config.mailboxes:
        print("mailtracker: no mailbox is configured ([[units.mailboxes]])", file=sys.stderr)
        return 0 if args.once else 2
    database = open_database(config.tracker.database)
    try:
        ingestor = Ingestor(
            database,
            config,
            reply_handler=ReplyService(config),
            case_handler=HighRiskAlerter(config),
        )
        # Under the mailbox leases, so a running daemon's mailboxes are left to it.
        lease_for = lease_factory(database, duration=config.tracker.mailbox_lease)
        if args.once:
            return report(
                poll_all_once(config, ingestor, batch_size=args.batch_size, lease_for=lease_for)
            )
        stop = threading.Event()

        def request_stop(_signum: int, _frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        threads = start_pollers(
            config, ingestor, stop, batch_size=args.batch_size, lease_for=lease_for
        )
        while not stop.wait(1.0):
            pass
        for thread in threads:
            thread.join(timeout=30)
        return 0
    finally:
        database.dispose()


def report(results: dict[str, str | None]) -> int:
    """Print one line per mailbox (failures on stderr); the exit status."""
    failed = 0
    for name, error in results.items():
        if error is None:
            print(f"{name}: ok")
        else:
            failed += 1
            print(f"mailtracker: {name}: FAILED: {error}", file=sys.stderr)
    return 1 if failed else 0
