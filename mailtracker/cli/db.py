"""``mailtracker db upgrade`` and ``db copy``: the schema, and moving to another database."""

from __future__ import annotations

import argparse
import sys

from alembic.util import CommandError
from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError
from tqdm import tqdm

from mailtracker.cli.common import config_from_args
from mailtracker.config import Config
from mailtracker.store.copy import TargetNotEmpty, copy_database
from mailtracker.store.db import Database, open_database


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("db", help="database maintenance")
    actions = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade = actions.add_parser("upgrade", help="apply the schema migrations (also done at start)")
    upgrade.set_defaults(handler=run_upgrade)
    copy = actions.add_parser(
        "copy",
        help="copy the configured database into another, empty one (e.g. to PostgreSQL)",
        description=(
            "Copy every row of the configured database into the empty database at URL, "
            "creating its schema first. Stop the daemon while it runs; afterwards point "
            "tracker.database at URL."
        ),
    )
    copy.add_argument("--to", required=True, metavar="URL", help="the target SQLAlchemy URL")
    copy.set_defaults(handler=run_copy)


def open_configured(config: Config) -> Database:
    """The configured database, migrated; exit status 1 with a clear message when unusable."""
    try:
        return open_database(config.tracker.database)
    except (SQLAlchemyError, CommandError, OSError) as error:
        print(f"mailtracker: cannot open the database: {error}", file=sys.stderr)
        raise SystemExit(1) from error


def run_copy(args: argparse.Namespace) -> int:
    source = open_configured(config_from_args(args))
    try:
        target = open_database(args.to)
    except (SQLAlchemyError, CommandError, OSError) as error:
        print(f"mailtracker: cannot open the target database: {error}", file=sys.stderr)
        source.dispose()
        return 1
    try:
        with tqdm(unit=" rows", disable=None) as bar:
            counts = copy_database(source, target, progress=lambda _table, rows: bar.update(rows))
    except TargetNotEmpty as error:
        print(f"mailtracker: {error}; copy only into an empty database", file=sys.stderr)
        return 1
    finally:
        source.dispose()
        target.dispose()
    for table, rows in counts.items():
        print(f"{table}: {rows} row(s)")
    print(f"copied to {make_url(args.to).render_as_string(hide_password=True)}")
    return 0


def run_upgrade(args: argparse.Namespace) -> int:
    database = open_configured(config_from_args(args))
    database.dispose()
    print("database schema is up to date")
    return 0
