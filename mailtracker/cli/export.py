"""``mailtracker export --format csv|xlsx [--unit ID] [--status S] [--output FILE]``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mailtracker.cli.common import config_from_args
from mailtracker.cli.db import open_configured
from mailtracker.config import LANGUAGES, ConfigError
from mailtracker.domain.workflow import STATUSES
from mailtracker.services.export import FORMATS, export_cases, render_export


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export cases with their deadlines as CSV or .xlsx",
        description=(
            "Export cases with their deadlines: reference, status, outcome, owner, risk, name, "
            "phone, commune, district, received, verify-by, period start and end, next "
            "follow-up (no ID number, no address; an observer unit gets no personal columns). "
            "CSV is UTF-8 with a byte-order mark, as Excel expects. The file is created "
            "readable by its owner only."
        ),
    )
    parser.add_argument("--format", choices=FORMATS, required=True, help="csv or xlsx")
    parser.add_argument("--unit", metavar="ID", help="only the cases this unit can see")
    parser.add_argument("--status", choices=STATUSES, help="only cases in this status")
    parser.add_argument(
        "--language", choices=LANGUAGES, help="column headers (default: the unit's language)"
    )
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        metavar="FILE",
        help="write here (default: standard output, which for xlsx must not be a terminal)",
    )
    parser.set_defaults(handler=run)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, created readable by its owner only (it holds personal data)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(data)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.output is None and args.format == "xlsx" and sys.stdout.isatty():
        print("mailtracker: give --output FILE for an .xlsx export", file=sys.stderr)
        return 2
    database = open_configured(config)
    try:
        with database.session(read_only=True) as session:
            table = export_cases(
                session, config, unit=args.unit, status=args.status, language=args.language
            )
    except ConfigError as error:
        print(f"mailtracker: {error}", file=sys.stderr)
        return 2
    finally:
        database.dispose()
    data = render_export(table, args.format)
    if args.output is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0
    try:
        write_private(args.output, data)
    except OSError as error:
        print(f"mailtracker: cannot write {args.output}: {error.strerror}", file=sys.stderr)
        return 1
    print(f"{len(table.rows)} case(s) written to {args.output}", file=sys.stderr)
    return 0
