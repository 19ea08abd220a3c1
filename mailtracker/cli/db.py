"""``mailtracker db upgrade``: bring the database schema up to date."""

from __future__ import annotations

import argparse
import sys

from alembic.util import CommandError
from sqlalchemy.exc import SQLAlchemyError

from mailtracker.cli.common import config_from_args
from mailtracker.config import Config
from mailtracker.store.db import Database, open_database


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("db", help="database maintenance")
    actions = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade = actions.add_parser("upgrade", help="apply the schema migrations (also done at start)")
    upgrade.set_defaults(handler=run_upgrade)


def open_configured(config: Config) -> Database:
    """The configured database, migrated; exit status 1 with a clear message when unusable."""
    try:
        return open_database(config.tracker.database)
    except (SQLAlchemyError, CommandError, OSError) as error:
        print(f"mailtracker: cannot open the database: {error}", file=sys.stderr)
        raise SystemExit(1) from error


def run_upgrade(args: argparse.Namespace) -> int:
    database = open_configured(config_from_args(args))
    database.dispose()
    print("database schema is up to date")
    return 0
