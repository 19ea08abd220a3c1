"""``mailtracker demo [--keep DIR]``: the whole cycle on embedded local servers."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mailtracker.demo import SERVER_CHOICES, DemoError, run_demo


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="a self-contained tour on embedded local mail servers and a temporary database",
        description=(
            "Start a local IMAP server (Dovecot when installed, else pymap) and an SMTP "
            "capture on free loopback ports, a temporary database and configuration; deliver "
            "sample notifications, poll, show the cases and the CDC's digest, reply as staff "
            "from Gmail, poll again, and show the acknowledgement and the updated case. "
            "Needs no configuration; stops every server before exiting."
        ),
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep the configuration, database and digest in DIR (default: a temporary "
        "directory, removed at the end except for the HTML digest)",
    )
    parser.add_argument(
        "--imap-server",
        choices=SERVER_CHOICES,
        default="auto",
        help="the embedded IMAP server (default: Dovecot when installed and root, else pymap)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.log_level == "INFO":
        # The tour prints what happens; the service's INFO lines would only repeat it.
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return run_demo(sys.stdout, keep=args.keep, server=args.imap_server)
    except DemoError as error:
        print(f"mailtracker demo: {error}", file=sys.stderr)
        return 1
