"""``mailtracker run``: the daemon, until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from mailtracker.cli.common import config_from_args
from mailtracker.cli.db import open_configured
from mailtracker.daemon import run_daemon


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="the daemon: poll mailboxes, send digests and alerts, flush the outbox",
        description=(
            "Poll every mailbox (IDLE where offered), send each unit its digest at digest_at "
            "(late, once, when the daemon was down then), send urgent alerts and flush the "
            "outbox, until SIGTERM or SIGINT."
        ),
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    database = open_configured(config)
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        return run_daemon(config, database, stop)
    finally:
        database.dispose()
