"""``python -m bench [--quick] [options]``: every benchmark, a table of figures with their
baselines measured in the same run, and ``bench/results.json``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import digests, ingest, latency
from bench.common import DovecotServer, Figure, Results

SECTIONS = ("ingest", "latency", "digests", "scale")
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.json"
FULL = {
    "messages": 10_000,
    "scale_messages": 2_000,
    "scale_levels": "10000,100000,300000",
    "latency_messages": 200,
    "replies": 20,
    "burst": 20,
    "digest_cases": 50_000,
}
QUICK = {
    "messages": 1_000,
    "scale_messages": 300,
    "scale_levels": "1000,10000,30000",
    "latency_messages": 30,
    "replies": 5,
    "burst": 10,
    "digest_cases": 5_000,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of mailtracker with their baselines; see docs/performance.md.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes (about two minutes)")
    p.add_argument("--only", choices=SECTIONS, action="append", help="run only this section")
    p.add_argument("--messages", type=int, help="ingest: messages in the mailbox (10000)")
    p.add_argument("--scale-messages", type=int, help="scale: messages per level (2000)")
    p.add_argument("--scale-levels", help="scale: stored cases, comma-separated")
    p.add_argument("--latency-messages", type=int, help="latency: notifications (200)")
    p.add_argument("--replies", type=int, help="latency: replies to acknowledge (20)")
    p.add_argument("--burst", type=int, help="latency: notifications in a burst (20)")
    p.add_argument("--digest-cases", type=int, help="digests: stored cases (50000)")
    p.add_argument("--units", type=int, default=10, help="digests: units (10)")
    p.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL ingest run")
    p.add_argument("--profile", type=Path, help="cProfile the SQLite ingest into this file")
    p.add_argument(
        "--py-spy",
        type=Path,
        help="sample the SQLite ingest, workers included, with py-spy into this file",
    )
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON results file")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    return p


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = "unknown"
    memory = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), cpu)
    with open("/proc/meminfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    return {
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "memory": memory,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "sqlite": sqlite3.sqlite_version,
        "load average at start": " ".join(f"{load:.2f}" for load in os.getloadavg()),
    }


def table(figures: Sequence[Figure]) -> str:
    """The figures as a Markdown table; ratio = cost relative to the baseline."""
    rows = [
        "| section | figure | value | baseline | ratio | goal | met |",
        "| --- | --- | ---: | --- | ---: | --- | --- |",
    ]
    for f in figures:
        baseline = f"{f.baseline:.4g} {f.unit} ({f.baseline_name})" if f.baseline else "-"
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else "-"
        met = {True: "yes", False: "**no**", None: ""}[f.met]
        rows.append(
            f"| {f.section} | {f.name} | {f.value:.4g} {f.unit} | {baseline} | {ratio} "
            f"| {f.goal} | {met} |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # SIGTERM ends the run through the cleanup (servers stopped, working directory removed).
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    sizes = QUICK if args.quick else FULL
    for name, value in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    levels = [int(level) for level in args.scale_levels.split(",") if level]
    sections = args.only or list(SECTIONS)
    options = {name: getattr(args, name) for name in (*FULL, "units", "quick", "no_postgres")}
    results = Results(machine=machine(), options=options | {"sections": sections})
    work = Path(tempfile.mkdtemp(prefix="mt-bench-"))
    work.chmod(0o755)
    started = time.perf_counter()
    try:
        with DovecotServer.running_in(work) as imap:
            if "ingest" in sections:
                ingest.throughput(
                    results,
                    imap,
                    work,
                    args.messages,
                    postgres=not args.no_postgres,
                    profile=args.profile,
                    py_spy=args.py_spy,
                )
            if "latency" in sections:
                latency.measure(
                    results, imap, work, args.latency_messages, args.replies, args.burst
                )
            if "scale" in sections:
                ingest.scale(results, imap, work, args.scale_messages, levels)
        if "digests" in sections:
            digests.measure(results, work, args.digest_cases, args.units)
    finally:
        if args.keep:
            print(f"working directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results.options["seconds"] = round(time.perf_counter() - started, 1)
    results.machine["load average at end"] = " ".join(f"{load:.2f}" for load in os.getloadavg())
    print()
    print(", ".join(f"{key}: {value}" for key, value in results.machine.items()))
    print("ratio = cost relative to the baseline (1.00: as fast or as small as the baseline)")
    print(table(results.figures))
    for note in results.notes:
        print(f"note: {note}")
    args.output.write_text(json.dumps(results.to_json(), indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten to {args.output} in {results.options['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
