"""Engine, sessions and migrations.

``open_database(url)`` accepts any SQLAlchemy URL. For SQLite it creates the file (and its
``-wal``/``-shm`` companions) readable by the owner only, turns on WAL, a busy timeout and
foreign keys, and starts every write transaction with ``BEGIN IMMEDIATE`` so that two processes
never interleave a read and a write. A server database's pooled connections are checked before
use, so a restarted server costs no failed job. The schema is brought up to date with Alembic
unless ``upgrade=False``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
READ_ONLY = "mailtracker_read_only"
SQLITE_BUSY_TIMEOUT_MS = 30_000


class Database:
    """An engine and its session factories; ``session()`` is one unit of work."""

    def __init__(self, url: str | URL) -> None:
        self.url = make_url(url)
        self.engine = (
            create_sqlite_engine(self.url)
            if self.is_sqlite
            else create_engine(self.url, pool_pre_ping=True)  # a restarted server is noticed
        )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(
            self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False
        )

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @contextmanager
    def session(self, *, read_only: bool = False) -> Iterator[Session]:
        """A session committed when the block ends normally and rolled back on an exception.

        A ``read_only`` session is never committed; what it loaded stays readable after it.
        """
        factory = self._read_sessions if read_only else self._sessions
        with factory() as session:
            try:
                yield session
                if not read_only:
                    session.commit()
            except BaseException:
                session.rollback()
                raise

    def upgrade(self, revision: str = "head") -> None:
        """Apply the Alembic migrations up to ``revision``, serialised against other processes."""
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7243507101)")
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config() -> AlembicConfig:
    """An Alembic configuration pointing at the migrations shipped inside the package."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def open_database(url: str | URL, *, upgrade: bool = True) -> Database:
    """Open (creating it when needed) the database at ``url`` and bring its schema up to date."""
    database = Database(url)
    if upgrade:
        logging.getLogger("alembic").setLevel(logging.WARNING)
        database.upgrade()
    return database


def sqlite_path(url: URL) -> Path | None:
    """The file of an on-disk SQLite URL, ``None`` for an in-memory database."""
    name = url.database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name)


def create_private_file(path: Path) -> None:
    """Create ``path`` (and its parent directories) readable by the owner only."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(descriptor)
    for companion in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if companion.exists():
            companion.chmod(0o600)


def create_sqlite_engine(url: URL) -> Engine:
    """A SQLite engine: private files, WAL, busy timeout, foreign keys, explicit transactions."""
    path = sqlite_path(url)
    if path is not None:
        create_private_file(path)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        previous = os.umask(0o077)
        try:
            # The driver's own transaction handling is switched off: BEGIN is emitted below.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            if path is not None:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
        finally:
            os.umask(previous)

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine
