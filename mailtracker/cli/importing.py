"""``mailtracker import PATH`` (backfill from files) and ``mailtracker reparse``."""

from __future__ import annotations

import argparse
import datetime as dt
import mailbox
import sys
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from mailtracker.cli.common import config_from_args
from mailtracker.cli.db import open_configured
from mailtracker.config import ConfigError
from mailtracker.services.ingest import Ingestor, ProcessResult


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    importer = subparsers.add_parser(
        "import",
        help="backfill from .eml files, a folder of them, an mbox file or a Maildir",
    )
    importer.add_argument("path", metavar="PATH", type=Path)
    importer.add_argument(
        "--unit", metavar="ID", help="the unit that received them (default: the first lead unit)"
    )
    importer.set_defaults(handler=run_import)

    reparse = subparsers.add_parser(
        "reparse", help="run stored messages through the parser again (replies excepted)"
    )
    reparse.add_argument(
        "--quarantined", action="store_true", help="only the messages in quarantine"
    )
    reparse.set_defaults(handler=run_reparse)


class SourceError(Exception):
    """PATH is not something messages can be read from."""


def is_maildir(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_dir() for name in ("cur", "new", "tmp"))


def count_messages(path: Path) -> int | None:
    """How many messages PATH holds, for the progress bar (None when unknown)."""
    if is_maildir(path):
        return len(mailbox.Maildir(path, create=False))
    if path.is_dir():
        return sum(1 for _ in path.glob("*.eml"))
    if path.is_file() and not looks_like_mbox(path):
        return 1
    return None


def looks_like_mbox(path: Path) -> bool:
    with path.open("rb") as stream:
        return stream.read(5) == b"From "


def read_messages(path: Path) -> Iterator[tuple[str, bytes]]:
    """``(label, raw)`` of every message at PATH, one at a time."""
    if is_maildir(path):
        box = mailbox.Maildir(path, create=False)
        for key in sorted(box.iterkeys()):
            yield f"{path}/{key}", box.get_bytes(key)
    elif path.is_dir():
        for file in sorted(path.glob("*.eml")):
            yield str(file), file.read_bytes()
    elif path.is_file():
        if looks_like_mbox(path):
            mbox = mailbox.mbox(path, create=False)
            for index, key in enumerate(mbox.iterkeys()):
                yield f"{path}#{index + 1}", mbox.get_bytes(key)
        else:
            yield str(path), path.read_bytes()
    else:
        raise SourceError(f"{path}: no such file or directory")


def report(result: ProcessResult) -> str:
    return (
        f"{result.processed} processed: {len(result.created)} case(s) created, "
        f"{len(result.merged)} merged, {result.replies} reply(ies), {result.ignored} automatic, "
        f"{result.quarantined} quarantined, {result.failed} failed"
    )


def run_import(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        unit = config.unit(args.unit) if args.unit else config.lead_unit()
    except ConfigError as error:
        print(f"mailtracker: {error}", file=sys.stderr)
        return 2
    path: Path = args.path
    if not path.exists():
        print(f"mailtracker: {path}: no such file or directory", file=sys.stderr)
        return 2
    database = open_configured(config)
    try:
        ingestor = Ingestor(database, config)
        try:
            sources = tqdm(
                read_messages(path), total=count_messages(path), unit="msg", file=sys.stderr
            )
            stored = ingestor.import_messages(unit.id, sources, now=dt.datetime.now(dt.UTC))
        except (OSError, SourceError, mailbox.Error) as error:
            print(f"mailtracker: cannot read {path}: {error}", file=sys.stderr)
            return 1
        result = ingestor.process_pending(now=dt.datetime.now(dt.UTC))
    finally:
        database.dispose()
    print(f"{stored} new message(s) stored for unit {unit.id}; {report(result)}")
    return 1 if result.failed else 0


def run_reparse(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    database = open_configured(config)
    try:
        ingestor = Ingestor(database, config)
        reset = ingestor.reset_for_reparse(quarantined_only=args.quarantined)
        result = ingestor.process_pending(now=dt.datetime.now(dt.UTC))
    finally:
        database.dispose()
    print(f"{reset} message(s) to parse again; {report(result)}")
    return 1 if result.failed else 0
