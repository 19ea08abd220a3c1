"""Digests over 50,000 cases across 10 units: building and rendering each unit's digest (its
``.xlsx`` of open cases included), against a plain SELECT of the same open cases rendered by a
trivial Jinja template; and the peak memory of one digest as its unit's closed cases grow."""

from __future__ import annotations

import functools
import statistics
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
from sqlalchemy import select

from bench.common import ENVIRON, Figure, Results
from bench.ingest import SEED_NOW
from bench.seed import seed_cases
from mailtracker.config import Config, config_from_dict
from mailtracker.domain.workflow import local_day
from mailtracker.services.digest import DigestService
from mailtracker.store.db import Database, open_database
from mailtracker.store.models import Case, CaseUnit

UNIT_GOAL = 1.0
MEMORY_GOAL = 1.25
EXTRA_CLOSED_FACTOR = 4
TRIVIAL = jinja2.Environment(autoescape=True).from_string(
    "<table>{% for row in rows %}<tr><td>{{ row.ref }}</td><td>{{ row.full_name }}</td>"
    "<td>{{ row.phone }}</td><td>{{ row.commune }}</td><td>{{ row.status }}</td>"
    "<td>{{ row.verify_by }}</td><td>{{ row.next_followup_due }}</td>"
    "<td>{{ row.period_end }}</td></tr>{% endfor %}</table>"
)


def units_config(database: str, units: int) -> Config:
    data: dict[str, Any] = {
        "tracker": {
            "database": database,
            "secret_key": "env:BENCH_SECRET",
            "case_prefix": "QN",
            "timezone": "Asia/Ho_Chi_Minh",
        },
        "smtp": {"host": "127.0.0.1", "port": 25, "security": "none", "from": "t@example.org"},
        "units": [
            {
                "id": f"u{number}",
                "name": f"Unit {number}",
                "role": "lead" if number == 0 else "member",
                "staff": [f"staff@u{number}.example.org"],
                "digest_to": [f"staff@u{number}.example.org"],
                "language": "vi" if number % 2 == 0 else "en",
            }
            for number in range(units)
        ],
    }
    return config_from_dict(data, environ=ENVIRON)


def full_digest(service: DigestService, db: Database, unit_id: str) -> int:
    """Build and render the unit's digest as the daemon does; the size of what it made."""
    with db.session(read_only=True) as session:
        built = service.build(session, unit_id, local_day(SEED_NOW, service.tz), SEED_NOW)
    return len(built.text) + len(built.html) + len(built.xlsx or b"")


def plain_digest(db: Database, unit_id: str) -> int:
    """The baseline: the unit's open cases by one SELECT, rendered by a trivial template."""
    visible = select(CaseUnit.case_id).where(CaseUnit.unit_id == unit_id)
    statement = select(
        Case.ref,
        Case.full_name,
        Case.phone,
        Case.commune,
        Case.status,
        Case.verify_by,
        Case.next_followup_due,
        Case.period_end,
    ).where(Case.id.in_(visible), Case.status != "closed")
    with db.session(read_only=True) as session:
        rows = session.execute(statement).all()
    return len(TRIVIAL.render(rows=rows))


def timed(action: Callable[[], int]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def peak_memory(action: Callable[[], int]) -> float:
    """Peak Python allocation (MB, tracemalloc) while ``action`` runs."""
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def measure(results: Results, work: Path, cases: int, units: int) -> None:
    url = f"sqlite:///{work / 'digests.db'}"
    config = units_config(url, units)
    db = open_database(url)
    try:
        print(f"digests: seeding {cases} cases across {units} units", flush=True)
        unit_ids = [unit.id for unit in config.units]
        seed_cases(db, cases, units=unit_ids, now=SEED_NOW)
        service = DigestService(config, db)
        for unit_id in unit_ids[:1]:  # warm the template and statement caches
            full_digest(service, db, unit_id)
            plain_digest(db, unit_id)
        full = {u: timed(functools.partial(full_digest, service, db, u)) for u in unit_ids}
        plain = {u: timed(functools.partial(plain_digest, db, u)) for u in unit_ids}
        worst = max(unit_ids, key=lambda u: full[u])
        results.add(
            Figure(
                "digests",
                f"build + render per unit ({cases:,} cases, {units} units), mean",
                statistics.mean(full.values()),
                "s",
                statistics.mean(plain.values()),
                "SELECT open cases + trivial Jinja table",
                details={"per_unit": {u: round(full[u], 4) for u in unit_ids}},
            )
        )
        results.add(
            Figure(
                "digests",
                "build + render per unit, slowest unit",
                full[worst],
                "s",
                plain[worst],
                "SELECT open cases + trivial Jinja table",
                goal=f"< {UNIT_GOAL:g} s per unit",
                met=full[worst] < UNIT_GOAL,
                details={"unit": worst},
            )
        )
        unit_id = unit_ids[0]
        before = peak_memory(lambda: full_digest(service, db, unit_id))
        closed_before = _closed(db, unit_id)
        print(f"digests: {EXTRA_CLOSED_FACTOR}x more closed cases for unit {unit_id}", flush=True)
        seed_cases(
            db,
            closed_before * EXTRA_CLOSED_FACTOR,
            units=[unit_id],
            now=SEED_NOW,
            statuses=["closed"],
            age_days=(41, 400),  # history: closed before the digest's window
        )
        closed_after = _closed(db, unit_id)
        after = peak_memory(lambda: full_digest(service, db, unit_id))
        seconds_after = timed(lambda: full_digest(service, db, unit_id))
        results.add(
            Figure(
                "digests",
                f"peak memory of one digest, {closed_after:,} closed cases",
                after,
                "MB",
                before,
                f"the same unit's digest with {closed_before:,} closed cases",
                goal=f"flat: ratio <= {MEMORY_GOAL}",
                met=after / before <= MEMORY_GOAL,
                details={"seconds_after": round(seconds_after, 4)},
            )
        )
    finally:
        db.dispose()


def _closed(db: Database, unit_id: str) -> int:
    visible = select(CaseUnit.case_id).where(CaseUnit.unit_id == unit_id)
    with db.session(read_only=True) as session:
        ids = session.scalars(
            select(Case.id).where(Case.id.in_(visible), Case.status == "closed")
        ).all()
    return len(ids)
