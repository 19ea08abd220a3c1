"""What the benchmarks run in a child process of their own, so that each one's peak RSS is its
own: ``python -m bench.child poll CONFIG`` runs the real
``mailtracker poll --once``; ``python -m bench.child baseline HOST PORT USER PASSWORD BATCH``
fetches the mailbox with imapclient and parses every message with mail-parser, no database.

Each prints one JSON object: ``seconds`` (the work itself, interpreter start-up excluded),
``messages`` and ``max_rss_mb`` (its peak RSS).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path


def poll(config: str, profile: str | None = None) -> dict[str, float | int]:
    """``mailtracker --config CONFIG poll --once``, timed in this process from after the imports
    (the schema upgrade included); with ``profile``, under cProfile, the statistics written to
    that file."""
    from mailtracker.cli import build_parser, main

    build_parser()  # every command module imported before the clock starts, as in the baseline
    argv = ["--config", config, "--log-level", "WARNING", "poll", "--once"]
    workers = WorkerPeaks()
    workers.start()
    started = time.perf_counter()
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        status = profiler.runcall(main, argv)
        profiler.dump_stats(profile)
    else:
        status = main(argv)
    seconds = time.perf_counter() - started
    workers.stop()
    if status != 0:
        raise SystemExit(f"poll --once exited with {status}")
    return {"seconds": seconds, "messages": -1, "workers": len(workers.peaks)} | {
        "workers_rss_mb": sum(workers.peaks.values()) / 1024
    }


class WorkerPeaks(threading.Thread):
    """Samples the peak RSS (``VmHWM``, kB) of each child process (the parsing workers and
    their helper) every 20 ms until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks: dict[int, int] = {}
        self._done = threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self._done.wait(0.02):
            children: list[int] = []
            for listing in Path(f"/proc/{me}/task").glob("*/children"):
                with contextlib.suppress(OSError):
                    children += [int(pid) for pid in listing.read_text("ascii").split()]
            for pid in children:
                peak = _vm_hwm_kb(f"/proc/{pid}/status")
                if peak is not None:
                    self.peaks[pid] = max(self.peaks.get(pid, 0), peak)

    def stop(self) -> None:
        self._done.set()
        self.join()


def _vm_hwm_kb(status_path: str) -> int | None:
    try:
        with open(status_path, encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def baseline(host: str, port: int, user: str, password: str, batch: int) -> dict[str, float | int]:
    """imapclient ``BODY.PEEK[]`` in batches of ``batch`` plus ``mailparser.parse_from_bytes``."""
    import mailparser
    from imapclient import IMAPClient

    started = time.perf_counter()
    client = IMAPClient(host, port=port, ssl=False, timeout=60)
    client.login(user, password)
    client.select_folder("INBOX", readonly=True)
    uids = sorted(client.search(["ALL"]))
    parsed = 0
    for start in range(0, len(uids), batch):
        response = client.fetch(uids[start : start + batch], [b"BODY.PEEK[]"])
        for data in response.values():
            message = mailparser.parse_from_bytes(data[b"BODY[]"])
            parsed += 1 if message.message_id else 0
    client.logout()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "messages": len(uids), "with_message_id": parsed}


def peak_rss_mb() -> float:
    """This process's peak resident set size since it started (``VmHWM``).

    Unlike ``ru_maxrss`` read by the parent with ``wait4``, it does not include the parent's
    own peak, which Linux carries over into a child's rusage across fork and exec.
    """
    peak = _vm_hwm_kb("/proc/self/status")
    return float("nan") if peak is None else peak / 1024


def main(argv: Sequence[str]) -> int:
    command, *args = argv
    if command == "poll":
        result = poll(args[0], args[1] if len(args) > 1 else None)
    elif command == "baseline":
        host, port, user, password, batch = args
        result = baseline(host, int(port), user, password, int(batch))
    else:
        raise SystemExit(f"unknown command {command!r}")
    print(json.dumps(result | {"max_rss_mb": peak_rss_mb()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
