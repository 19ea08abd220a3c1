"""``mailtracker cases`` and ``mailtracker case REF``: list cases, show one with its history."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from zoneinfo import ZoneInfo

from mailtracker.cli.common import config_from_args, print_json
from mailtracker.cli.db import open_configured
from mailtracker.config import ConfigError
from mailtracker.domain.workflow import STATUSES, is_overdue
from mailtracker.store.models import Case
from mailtracker.store.queries import (
    case_detail_json,
    case_json,
    case_state,
    find_case,
    list_cases,
    normalise_ref,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listing = subparsers.add_parser("cases", help="list cases")
    listing.add_argument("--unit", metavar="ID", help="only the cases this unit can see")
    listing.add_argument("--status", choices=STATUSES, help="only cases in this status")
    listing.add_argument(
        "--overdue",
        action="store_true",
        help="only overdue verifications, overdue follow-ups and periods due for release",
    )
    listing.add_argument("--json", action="store_true", help="print a JSON array of cases")
    listing.set_defaults(handler=run_cases)

    single = subparsers.add_parser("case", help="one case with its deadlines, sources and history")
    single.add_argument("ref", metavar="REF", help="QN-0042, QN-42, QN42 or #42")
    single.add_argument("--json", action="store_true", help="print the case as a JSON object")
    single.set_defaults(handler=run_case)


def run_cases(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    unit = None
    if args.unit is not None:
        try:
            unit = config.unit(args.unit).id
        except ConfigError as error:
            print(f"mailtracker: {error}", file=sys.stderr)
            return 2
    tz = config.tracker.timezone
    database = open_configured(config)
    try:
        with database.session(read_only=True) as session:
            cases = list_cases(session, unit=unit, status=args.status)
            if args.overdue:
                now = dt.datetime.now(dt.UTC)
                cases = [case for case in cases if is_overdue(case_state(case), now, tz)]
            if args.json:
                print_json([case_json(case, tz) for case in cases])
            else:
                print(table(cases, tz))
    finally:
        database.dispose()
    return 0


def run_case(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    ref = normalise_ref(args.ref, config.tracker.case_prefix)
    if ref is None:
        print(f"mailtracker: {args.ref!r} is not a case reference", file=sys.stderr)
        return 2
    tz = config.tracker.timezone
    database = open_configured(config)
    try:
        with database.session(read_only=True) as session:
            case = find_case(session, ref)
            if case is None:
                print(f"mailtracker: no case {ref}", file=sys.stderr)
                return 1
            if args.json:
                print_json(case_detail_json(case, tz))
            else:
                print(detail(case, tz))
    finally:
        database.dispose()
    return 0


def _local(moment: dt.datetime | None, tz: ZoneInfo) -> str:
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M") if moment is not None else "-"


def next_deadline(case: Case, tz: ZoneInfo) -> str:
    """The case's pending deadline, shortly: verify-by, next follow-up or period end."""
    if case.verify_by is not None:
        return f"verify by {_local(case.verify_by, tz)}"
    if case.next_followup_due is not None:
        return f"follow-up {_local(case.next_followup_due, tz)}"
    if case.period_end is not None:
        return f"ends {case.period_end.isoformat()}"
    return "-"


def table(cases: Sequence[Case], tz: ZoneInfo) -> str:
    """A plain-text table of cases, one per line."""
    header = ("REF", "STATUS", "OWNER", "UNITS", "RISK", "RECEIVED", "DEADLINE", "NAME", "COMMUNE")
    rows = [
        (
            case.ref or "",
            case.status if case.outcome is None else f"{case.status}/{case.outcome}",
            case.owner_unit,
            ",".join(unit.unit_id for unit in case.units),
            case.risk,
            _local(case.received_at, tz),
            next_deadline(case, tz),
            case.full_name or "-",
            case.commune or "-",
        )
        for case in cases
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    lines.append(f"{len(rows)} case(s)")
    return "\n".join(line.rstrip() for line in lines)


def detail(case: Case, tz: ZoneInfo) -> str:
    """A readable account of one case: report, deadlines, sources, follow-ups, history."""
    data = case_detail_json(case, tz)
    lines = [f"{case.ref}  {data['status']}" + (f" ({case.outcome})" if case.outcome else "")]
    for key in (
        "owner_unit",
        "units",
        "risk",
        "received_at",
        "verify_by",
        "period_start",
        "period_start_reason",
        "period_end",
        "last_followup_at",
        "next_followup_due",
    ):
        value = data[key]
        shown = ", ".join(value) if isinstance(value, list) else value
        lines.append(f"  {key.replace('_', ' ')}: {shown if shown is not None else '-'}")
    lines.append("report:")
    for key, value in data["report"].items():
        shown = ", ".join(value) if isinstance(value, list) else value
        lines.append(f"  {key.replace('_', ' ')}: {shown if shown not in (None, '') else '-'}")
    lines.append("sources:")
    for source in data["sources"]:
        lines.append(f"  {source['received_at']}  {source['mailbox']}  <{source['message_id']}>")
    if data["followups"]:
        lines.append("follow-ups:")
        for followup in data["followups"]:
            temperature = followup["temperature"]
            lines.append(
                f"  {followup['at']}  {followup['result']}"
                + (f" {temperature}°C" if temperature is not None else "")
                + (f"  {followup['note']}" if followup["note"] else "")
                + f"  ({followup['actor']}, {followup['channel']})"
            )
    lines.append("history:")
    for event in data["history"]:
        change = (
            f" {event['from_status'] or '-'} -> {event['to_status']}"
            if event["from_status"] != event["to_status"]
            else ""
        )
        lines.append(
            f"  {event['at']}  {event['action']}{change}  ({event['actor']}, {event['channel']})"
        )
    return "\n".join(lines)
