"""``mailtracker parse FILE.eml... [--json]``: offline classification and extraction."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

from mailtracker.cli.common import print_json
from mailtracker.config import ConfigError, load_config
from mailtracker.parsing.message import ParsedMessage, parse_message

DEFAULT_PREFIX = "QN"
DEFAULT_TIMEZONE = "Asia/Ho_Chi_Minh"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "parse",
        help="classify e-mail files and show what would be extracted (no database, no network)",
    )
    parser.add_argument("files", nargs="+", metavar="FILE.eml", type=Path)
    parser.add_argument("--json", action="store_true", help="print the JSON array of the contract")
    parser.set_defaults(handler=run)


def _prefix_and_timezone(args: argparse.Namespace) -> tuple[str, ZoneInfo]:
    """The case prefix and time zone of the configuration when one is given, else defaults."""
    if args.config is None and not Path("config.toml").exists():
        return DEFAULT_PREFIX, ZoneInfo(DEFAULT_TIMEZONE)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        if args.config is not None:
            raise SystemExit(f"mailtracker: {error}") from error
        return DEFAULT_PREFIX, ZoneInfo(DEFAULT_TIMEZONE)
    return config.tracker.case_prefix, config.tracker.timezone


def run(args: argparse.Namespace) -> int:
    prefix, timezone = _prefix_and_timezone(args)
    results: list[tuple[Path, ParsedMessage]] = []
    status = 0
    for path in args.files:
        try:
            raw = path.read_bytes()
        except OSError as error:
            print(f"mailtracker: cannot read {path}: {error.strerror}", file=sys.stderr)
            status = 1
            continue
        results.append((path, parse_message(raw, case_prefix=prefix, timezone=timezone)))
    if args.json:
        print_json([parsed.to_json(path.name) for path, parsed in results])
    else:
        for path, parsed in results:
            print(summary(path.name, parsed))
    return status


def summary(name: str, parsed: ParsedMessage) -> str:
    """A short human-readable account of one parsed file."""
    lines = [f"{name}: {parsed.kind}" + (f" ({parsed.error})" if parsed.error else "")]
    for report in parsed.reports:
        symptoms = ", ".join(report.symptoms) or "-"
        lines.append(
            f"  report {report.report_id or '-'}: {report.full_name or '?'}, "
            f"{report.phone or '-'}, {report.commune or '-'}/{report.district or '-'}; "
            f"risk {report.risk}; symptoms {symptoms}"
        )
    for command in parsed.commands:
        lines.append(f"  command {command.ref} {command.action} {command.args or ''}".rstrip())
    for line in parsed.not_understood:
        lines.append(f"  not understood: {line}")
    return "\n".join(lines)
