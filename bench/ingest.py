"""Ingest throughput (``poll --once`` into an empty database) against a fetch-and-parse
baseline, on SQLite and PostgreSQL, and the cost per message as stored cases grow."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import func, select

from bench import mailgen, spy
from bench.common import (
    BATCH_SIZE,
    PASSWORD,
    DovecotServer,
    Figure,
    Results,
    postgres_cluster,
    run_child,
    write_config,
)
from bench.seed import seed_cases
from mailtracker.store.db import open_database
from mailtracker.store.models import Case

THROUGHPUT_GOAL = 1_000.0
RATIO_GOAL = 1.5
RSS_GOAL_MB = 200.0
SCALE_GOAL = 1.25
"""Cost per message at the largest level over the cost on an empty database."""
SINGLE = "SQLite, parse_workers = 0"
"""The SQLite run again with parsing in the main process only."""
SEED_NOW = dt.datetime(2020, 3, 1, 1, 0, tzinfo=dt.UTC)


def fill(imap: DovecotServer, user: str, count: int, first_person: int) -> float:
    """Create ``user`` holding ``count`` generated notifications; the seconds it took."""
    started = time.perf_counter()
    imap.add_user(user, PASSWORD)
    imap.deliver_maildir(user, mailgen.mailbox(count, first_person=first_person, to=user))
    return time.perf_counter() - started


def count_cases(url: str) -> int:
    db = open_database(url, upgrade=False)
    try:
        with db.session(read_only=True) as session:
            return session.scalar(select(func.count()).select_from(Case)) or 0
    finally:
        db.dispose()


def baseline(imap: DovecotServer, user: str) -> tuple[float, float]:
    """Messages per second and peak RSS (MB) of fetch + mail-parser (best of two runs)."""
    runs = [
        run_child(["baseline", imap.host, str(imap.port), user, PASSWORD, str(BATCH_SIZE)])
        for _ in range(2)
    ]
    best = min(runs, key=lambda run: run.output["seconds"])
    return best.output["messages"] / best.output["seconds"], best.max_rss_mb


def throughput(
    results: Results,
    imap: DovecotServer,
    work: Path,
    messages: int,
    *,
    postgres: bool,
    profile: Path | None,
    py_spy: Path | None = None,
) -> None:
    user = "cdc-inbox@example.org"
    print(f"ingest: generating and delivering {messages} messages", flush=True)
    seconds = fill(imap, user, messages, first_person=0)
    print(f"  delivered in {seconds:.1f}s", flush=True)
    base_rate, base_rss = baseline(imap, user)
    expected = mailgen.reports_in(messages)
    targets: list[tuple[str, str | None]] = [("SQLite", f"sqlite:///{work / 'ingest.db'}")]
    with postgres_cluster(work) as pg_url:
        if postgres:
            if pg_url is None:
                results.notes.append("PostgreSQL: no throwaway cluster could be started.")
            targets.append(("PostgreSQL", pg_url))
        if targets[0][1] is not None:  # the same without parsing workers, for comparison
            targets.insert(1, (SINGLE, f"sqlite:///{work / 'ingest-single.db'}"))
        for label, url in targets:
            if url is None:
                continue
            config = write_config(
                work / f"ingest-{label.split(',')[0]}.toml",
                database=url,
                imap=imap,
                users={"cdc": [user]},
                parse_workers=0 if label == SINGLE else None,
            )
            args = ["poll", str(config)]
            if profile is not None and label == "SQLite":
                args.append(str(profile))
            print(f"ingest: poll --once into an empty {label} database", flush=True)
            sampled = py_spy is not None and label == "SQLite"
            run = run_child(args, wrapper=spy.command(py_spy) if sampled and py_spy else ())
            if sampled and py_spy:
                results.notes += spy.summary(py_spy)
                print("\n".join(spy.summary(py_spy)), flush=True)
            rate = messages / run.output["seconds"]
            rss = run.max_rss_mb + run.output["workers_rss_mb"]
            cases = count_cases(url)
            details = {
                "messages": messages,
                "cases": cases,
                "expected_cases": expected,
                "seconds": round(run.output["seconds"], 2),
                "process_wall_seconds": round(run.wall_seconds, 2),
                "profiled": (profile is not None or py_spy is not None) and label == "SQLite",
                "child_processes": run.output["workers"],
                "main_process_rss_mb": round(run.max_rss_mb, 1),
            }
            if cases != expected:
                results.notes.append(f"{label}: {cases} cases for {expected} reports sent.")
            results.add(
                Figure(
                    "ingest",
                    f"throughput, {label}",
                    rate,
                    "msg/s",
                    base_rate,
                    "imapclient BODY.PEEK[] + mailparser, no DB",
                    goal=f">= {THROUGHPUT_GOAL:.0f} msg/s, cost ratio <= {RATIO_GOAL}",
                    met=rate >= THROUGHPUT_GOAL and base_rate / rate <= RATIO_GOAL,
                    details=details,
                    higher_is_better=True,
                )
            )
            results.add(
                Figure(
                    "ingest",
                    f"peak RSS, {label} (main process + workers)",
                    rss,
                    "MB",
                    base_rss,
                    "peak RSS of the baseline process",
                    goal=f"<= {RSS_GOAL_MB:.0f} MB",
                    met=rss <= RSS_GOAL_MB,
                    details={"main_process_mb": round(run.max_rss_mb, 1)},
                )
            )


def scale(
    results: Results,
    imap: DovecotServer,
    work: Path,
    messages: int,
    levels: Sequence[int],
) -> None:
    """Ingest ``messages`` new notifications into one database as it grows through
    ``levels`` stored cases; the level 0 (empty) is the baseline."""
    url = f"sqlite:///{work / 'scale.db'}"
    db = open_database(url)
    stored = 0
    costs: dict[int, float] = {}
    try:
        for index, level in enumerate([0, *levels]):
            if level > stored:
                print(f"scale: seeding up to {level} stored cases", flush=True)
                started = time.perf_counter()
                seed_cases(db, level - stored, units=["cdc"], now=SEED_NOW)
                print(f"  seeded in {time.perf_counter() - started:.1f}s", flush=True)
                stored = level
            user = f"scale{index}@example.org"
            fill(imap, user, messages, first_person=10_000_000 * (index + 1))
            config = write_config(
                work / f"scale{index}.toml", database=url, imap=imap, users={"cdc": [user]}
            )
            print(f"scale: poll --once of {messages} messages over {level} cases", flush=True)
            run = run_child(["poll", str(config)])
            costs[level] = run.output["seconds"] / messages * 1000
            stored += mailgen.reports_in(messages)
            if level == 0:
                continue
            results.add(
                Figure(
                    "scale",
                    f"ingest cost at {level:,} stored cases",
                    costs[level],
                    "ms/msg",
                    costs[0],
                    "same ingest into an empty database",
                    goal=f"flat: ratio <= {SCALE_GOAL}",
                    met=costs[level] / costs[0] <= SCALE_GOAL,
                    details={"messages": messages},
                )
            )
    finally:
        db.dispose()
