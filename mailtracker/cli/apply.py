"""``mailtracker apply --as EMAIL "REF ACTION [ARGS]"``: one command, with the rules of a reply."""

from __future__ import annotations

import argparse
import datetime as dt

from mailtracker.cli.common import config_from_args, print_json
from mailtracker.cli.db import open_configured
from mailtracker.services.cases import CaseService

LABELS = {"vi": ("đã áp dụng", "từ chối"), "en": ("applied", "refused")}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "apply",
        help="apply one command to a case as a staff member, with the same rules as a reply",
    )
    parser.add_argument(
        "--as", dest="actor", metavar="EMAIL", required=True, help="the staff member's address"
    )
    parser.add_argument(
        "line",
        metavar='"REF ACTION [ARGS]"',
        help='one command line, e.g. "QN-42 home 10/02/2020" (dates read against now)',
    )
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    parser.set_defaults(handler=run_apply)


def run_apply(args: argparse.Namespace) -> int:
    """Exit 0 when the command was applied, 1 when it was refused."""
    config = config_from_args(args)
    service = CaseService(config)
    now = dt.datetime.now(dt.UTC)
    database = open_configured(config)
    try:
        with database.session() as session:
            outcome = service.apply_line(
                session, args.line, actor=args.actor, channel="cli", now=now
            )
    finally:
        database.dispose()
    if args.json:
        print_json(outcome.to_json())
    else:
        language = service.language_for(args.actor)
        applied, refused = LABELS[language]
        label = applied if outcome.applied else refused
        print(f"{label}: {outcome.message(language)}")
    return 0 if outcome.applied else 1
