"""Where the ingest's time goes, main process and parsing workers apart: the SQLite ingest
sampled by py-spy (``--py-spy FILE``, raw collapsed stacks), summarised by stage.

py-spy is not a dependency: ``pip install py-spy``. Samples of threads that only wait (the
executor's threads, the benchmark's memory sampler) are left out of the shares.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

MAIN_STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("imports and start-up", ("build_parser (", "_find_and_load (")),
    ("waiting for the parsing workers", ("_Chunk.take (",)),
    ("matching reports and writing cases (Ingestor._apply)", ("Ingestor._apply (",)),
    ("claiming and loading a batch", ("Ingestor._process_batch (",)),
    ("storing raw messages (Ingestor.store_batch)", ("Ingestor.store_batch (",)),
    ("IMAP fetch (imapclient)", ("MailboxPoller._fetch_and_store (",)),
    ("handing contents to the workers", ("Queue._feed (", "Ingestor._contents (")),
    ("parsing in the main process", ("parse_message (",)),
)
WORKER_STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("start-up and imports", ("_find_and_load (",)),
    ("mail-parser (parse_from_bytes)", ("parse_from_bytes (",)),
    (".xlsx attachments (openpyxl)", ("fields_from_xlsx (",)),
    ("HTML tables (BeautifulSoup)", ("fields_from_html (", "html_to_text (")),
    ("reports from fields (build_report)", ("build_report (",)),
    ("labelled lines and other parts", ("_extract (",)),
    ("headers and addresses", ("_header_values (", "_addresses (")),
)
HELPERS = ("_ExecutorManagerThread", "WorkerPeaks", "resource_tracker")
"""Threads and processes that wait for the others (or measure them), not counted."""


def command(output: Path) -> list[str]:
    """The py-spy command line that samples a child and its workers into ``output``."""
    if shutil.which("py-spy") is None:
        raise SystemExit("--py-spy needs py-spy: pip install py-spy")
    options = ["--subprocesses", "--rate", "200", "--format", "raw", "--output", str(output)]
    return ["py-spy", "record", *options, "--"]


def summary(raw: Path) -> list[str]:
    """One line per process kind and stage: samples and share of that process's samples."""
    counts: Counter[tuple[str, str]] = Counter()
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit() or any(helper in stack for helper in HELPERS):
            continue
        if "Queue._feed (" in stack and "Condition.wait (" in stack:
            continue  # the queue's feeder thread with nothing to send
        kind = "worker" if "spawn_main" in stack else "main"
        stages = WORKER_STAGES if kind == "worker" else MAIN_STAGES
        counts[(kind, _stage(stack, stages))] += int(number)
    lines: list[str] = []
    for kind in ("main", "worker"):
        total = sum(n for (k, _), n in counts.items() if k == kind)
        if not total:
            continue
        lines.append(f"py-spy, {kind} process(es): {total} samples at 200 Hz")
        ranked = sorted(((n, stage) for (k, stage), n in counts.items() if k == kind), reverse=True)
        lines += [f"  {stage}: {100 * n / total:.0f} %" for n, stage in ranked]
    return lines


def _stage(stack: str, stages: Sequence[tuple[str, tuple[str, ...]]]) -> str:
    for name, markers in stages:
        if any(marker in stack for marker in markers):
            return name
    return "other"
