"""The storage layer: migrations, SQLite settings and file mode, timestamps, references.

Runs on SQLite and on PostgreSQL (the ``database_url`` fixture).
"""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from mailtracker.store.db import Database, open_database
from mailtracker.store.models import Base, Case, CaseEvent, MailboxState, Message
from mailtracker.store.queries import format_ref, normalise_ref

NOW = dt.datetime(2020, 2, 12, 1, 30, tzinfo=dt.UTC)


def sqlite_only(db: Database) -> None:
    if not db.is_sqlite:
        pytest.skip("SQLite-specific behaviour; the test database is not SQLite")


def test_migrations_create_every_table_of_the_models(database: Database) -> None:
    tables = set(inspect(database.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_migrated_schema_matches_the_models_exactly(database: Database) -> None:
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_upgrading_twice_changes_nothing(database_url: str) -> None:
    first = open_database(database_url)
    with first.session() as session:
        session.add(MailboxState(mailbox="cdc", uidvalidity=5, last_uid=9))
    first.dispose()
    second = open_database(database_url)
    with second.session(read_only=True) as session:
        state = session.get_one(MailboxState, "cdc")
        assert (state.uidvalidity, state.last_uid) == (5, 9)
        version = session.scalar(text("SELECT version_num FROM alembic_version"))
    assert version == "0001"
    second.dispose()


def test_sqlite_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "tracker.db"
    db = open_database(f"sqlite:///{path}")
    with db.session() as session:
        session.add(MailboxState(mailbox="cdc", uidvalidity=1, last_uid=0))
    files = [path, path.with_name("tracker.db-wal"), path.with_name("tracker.db-shm")]
    for file in files:
        assert file.exists(), file
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    db.dispose()


def test_sqlite_connection_settings(database: Database) -> None:
    sqlite_only(database)
    with database.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_foreign_keys_are_enforced(database: Database) -> None:
    with pytest.raises(IntegrityError), database.session() as session:
        session.add(CaseEvent(case_id=999, at=NOW, actor="system", channel="system", action="note"))


def test_timestamps_come_back_aware_in_utc(database: Database) -> None:
    local = dt.datetime(2020, 2, 12, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=7)))
    with database.session() as session:
        session.add(MailboxState(mailbox="cdc", last_uid=0, last_success_at=local))
    with database.session(read_only=True) as session:
        stored = session.get_one(MailboxState, "cdc").last_success_at
    assert stored == local
    assert stored is not None and stored.utcoffset() == dt.timedelta(0)
    assert stored.day == 11  # 00:30 in Hà Nội is the previous day in UTC


def test_naive_timestamps_are_refused(database: Database) -> None:
    with pytest.raises(Exception, match="naive datetime"), database.session() as session:
        session.add(
            MailboxState(mailbox="cdc", last_uid=0, last_success_at=dt.datetime(2020, 1, 1))
        )


def test_a_failed_unit_of_work_leaves_nothing_behind(database: Database) -> None:
    with pytest.raises(RuntimeError), database.session() as session:
        session.add(MailboxState(mailbox="cdc", last_uid=0))
        session.flush()
        raise RuntimeError("boom")
    with database.session(read_only=True) as session:
        assert session.get(MailboxState, "cdc") is None


def test_the_same_uid_cannot_be_stored_twice(database: Database) -> None:
    def message() -> Message:
        return Message(
            mailbox="cdc",
            uidvalidity=1,
            uid=7,
            unit_id="cdc",
            content_hash="0" * 64,
            raw=b"x",
            size=1,
            received_at=NOW,
        )

    with database.session() as session:
        session.add(message())
    with pytest.raises(IntegrityError), database.session() as session:
        session.add(message())


def test_large_uids_and_uidvalidities_fit(database: Database) -> None:
    with database.session() as session:
        session.add(MailboxState(mailbox="cdc", uidvalidity=4_294_967_295, last_uid=4_294_967_295))
    with database.session(read_only=True) as session:
        assert session.get_one(MailboxState, "cdc").last_uid == 4_294_967_295


def test_case_ids_are_never_reused(database: Database) -> None:
    def add_case() -> int:
        with database.session() as session:
            case = Case(
                owner_unit="cdc",
                status="new",
                risk="low",
                received_at=NOW,
                created_at=NOW,
                updated_at=NOW,
            )
            session.add(case)
            session.flush()
            case.ref = format_ref("QN", case.id)
            return case.id

    first = add_case()
    with database.session() as session:
        session.delete(session.get_one(Case, first))
    second = add_case()
    assert second > first
    with database.session(read_only=True) as session:
        assert session.scalars(select(Case.ref)).all() == [format_ref("QN", second)]


@pytest.mark.parametrize(
    ("text_ref", "expected"),
    [
        ("QN-0042", "QN-0042"),
        ("qn-42", "QN-0042"),
        ("QN42", "QN-0042"),
        ("#42", "QN-0042"),
        ("42", "QN-0042"),
        (" QN-12345 ", "QN-12345"),
        ("HN-42", None),
        ("QN-0", None),
        ("QN-", None),
        ("hello", None),
    ],
)
def test_normalise_ref(text_ref: str, expected: str | None) -> None:
    assert normalise_ref(text_ref, "QN") == expected
