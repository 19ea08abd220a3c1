"""Copy every row of one mailtracker database into another, empty one (e.g. SQLite to
PostgreSQL when a department outgrows one machine)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, select, text

from mailtracker.store.db import Database
from mailtracker.store.models import Base

BATCH_ROWS = 1000

Progress = Callable[[str, int], None]
"""Called with a table name and the number of rows just copied into it."""


class TargetNotEmpty(Exception):
    """The target database already holds data; copying would mix two histories."""


def copy_database(
    source: Database, target: Database, *, progress: Progress | None = None
) -> dict[str, int]:
    """Copy all rows, parents before children, in one target transaction; the row count of
    each table. Both databases must be at the same schema revision (``open_database`` does
    that); the target must be empty."""
    tables = Base.metadata.sorted_tables
    counts: dict[str, int] = {}
    with source.engine.connect() as reader, target.engine.begin() as writer:
        for table in tables:
            if writer.scalar(select(func.count()).select_from(table)):
                raise TargetNotEmpty(f"table {table.name} of the target already has rows")
        for table in tables:
            counts[table.name] = 0
            result = reader.execution_options(yield_per=BATCH_ROWS).execute(select(table))
            for rows in result.mappings().partitions():
                writer.execute(table.insert(), [dict(row) for row in rows])
                counts[table.name] += len(rows)
                if progress is not None:
                    progress(table.name, len(rows))
        if target.engine.dialect.name == "postgresql":
            for table in tables:
                column = table.autoincrement_column
                if column is not None:  # the next id follows the copied ones
                    writer.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{table.name}', "
                            f"'{column.name}'), COALESCE(MAX({column.name}), 1), "
                            f"MAX({column.name}) IS NOT NULL) FROM {table.name}"
                        )
                    )
    return counts
