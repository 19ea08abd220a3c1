"""Latency with ``mailtracker run`` up and IDLE on: APPEND to case row, and a staff reply's
APPEND to its acknowledgement at the SMTP server; the baseline is the bare IDLE notification
(an imapclient session in IDLE seeing the APPENDed message's EXISTS)."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from imapclient import IMAPClient

from bench import mailgen
from bench.common import (
    PASSWORD,
    ROOT,
    SECRET,
    DovecotServer,
    Figure,
    Results,
    child_env,
    free_port,
    percentile,
    wait_listening,
    write_config,
)
from mailtracker.domain.tokens import make_token, reply_address, token_message_id

CASE_GOAL = 1.0
ACK_GOAL = 3.0
WAIT_SECONDS = 90.0
"""Longer than the daemon's sweep (``poll_every`` 60 s): a missed IDLE notification shows as
an outlier instead of a failure."""
GAP_SECONDS = 0.3
"""Pause between one message's case row and the next APPEND: the poller is back in IDLE, as
when mail arrives at a real mailbox."""
POLL_STEP = 0.005
IDLE_SETTLE = 0.3
BURST_GAP_SECONDS = 0.1
MAILBOX = "latency@example.org"
"""A mailbox of its own: empty when the daemon starts."""


class SmtpSink:
    """aiosmtpd in this process, noting when each message arrived, by In-Reply-To."""

    def __init__(self) -> None:
        self.port = free_port()
        self.arrivals: dict[str, float] = {}
        self.count = 0
        self.lock = threading.Lock()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    def arrived(self, message_id: str) -> bool:
        with self.lock:
            return message_id in self.arrivals

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        arrived = time.perf_counter()
        raw = bytes(envelope.original_content or envelope.content)
        header, _, _ = raw.partition(b"\r\n\r\n")
        with self.lock:
            self.count += 1
            for line in header.split(b"\r\n"):
                if line.lower().startswith(b"in-reply-to:"):
                    self.arrivals[line.split(b":", 1)[1].strip().decode()] = arrived
        return "250 OK"


@contextlib.contextmanager
def daemon(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``mailtracker --config CONFIG run`` in a child process, stopped with SIGTERM."""
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "mailtracker", "--config", str(config), "run"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=ROOT,
            env=child_env(),
        )
        try:
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until(condition: Callable[[], bool], timeout: float = WAIT_SECONDS) -> float | None:
    """Poll ``condition`` until true; the moment (perf_counter) it was, None on timeout."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if condition():
            return time.perf_counter()
        time.sleep(POLL_STEP)
    return None


def reply(sender: str, ref: str, number: int) -> tuple[str, bytes]:
    """A staff reply to a digest (token in the Reply-To plus-address and In-Reply-To)
    putting ``ref`` into home isolation; its Message-ID and bytes."""
    now = dt.datetime.now(dt.UTC)
    token = make_token("cdc", key=SECRET.encode(), issued=now, kind="d")
    message = EmailMessage()
    message_id = make_msgid(idstring=f"bench{number}", domain="cdc.example.org")
    message["From"] = f"Cán bộ <{sender}>"
    message["To"] = reply_address(MAILBOX, token)
    message["Subject"] = "Re: [QN] Bản tin hằng ngày"
    message["Date"] = format_datetime(now)
    message["Message-ID"] = message_id
    original = token_message_id(token, "example.org", nonce=f"n{number}")
    message["In-Reply-To"] = original
    message["References"] = original
    message.set_content(f"{ref} cách ly tại nhà\n\n> Bản tin hằng ngày\n")
    return message_id, message.as_bytes()


def idle_baseline(imap: DovecotServer, user: str, samples: int) -> list[float]:
    """Seconds from the start of an APPEND to the EXISTS seen by another session in IDLE."""
    latencies = []
    with imap.client(user) as watcher, imap.client(user) as writer:
        watcher.select_folder("INBOX", readonly=True)
        for number in range(samples):
            watcher.idle()
            raw = mailgen.notification(90_000_000 + number, "labels_qp", user)
            time.sleep(IDLE_SETTLE)  # as in the daemon, the IDLE is established before the APPEND
            started = time.perf_counter()
            writer.append("INBOX", raw)
            seen = None
            while seen is None and time.perf_counter() - started < WAIT_SECONDS:
                responses = watcher.idle_check(timeout=1.0)
                if any(len(r) >= 2 and r[1] == b"EXISTS" for r in responses):
                    seen = time.perf_counter()
            watcher.idle_done()
            if seen is not None:
                latencies.append(seen - started)
    return latencies


def measure(
    results: Results, imap: DovecotServer, work: Path, messages: int, replies: int, burst: int
) -> None:
    imap.add_user(MAILBOX, PASSWORD)
    imap.add_user("idle-baseline@example.org", PASSWORD)
    print("latency: raw IDLE notification baseline", flush=True)
    baseline = idle_baseline(imap, "idle-baseline@example.org", min(messages, 50))
    staff = [f"staff{number}@cdc.example.org" for number in range(replies)] or ["epi@example.org"]
    sink = SmtpSink()
    sink.controller.start()
    database = work / "latency.db"
    config = write_config(
        work / "latency.toml",
        database=f"sqlite:///{database}",
        imap=imap,
        users={"cdc": [MAILBOX]},
        smtp_port=sink.port,
        staff=staff,
    )
    case_latencies: list[float] = []
    ack_latencies: list[float] = []
    burst_latencies: list[float] = []
    try:
        wait_listening(sink.port, up=True)
        with daemon(config, work / "latency-daemon.log") as process:
            ready = wait_until(lambda: _polled(database), timeout=120)
            if ready is None:
                log = (work / "latency-daemon.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the daemon made no successful poll in 120 s:\n{log}")
            time.sleep(1.0)  # the poller enters IDLE after its first pass
            print(f"latency: {messages} notifications APPENDed one at a time", flush=True)
            with (
                imap.client(MAILBOX) as writer,
                contextlib.closing(
                    sqlite3.connect(f"file:{database}?mode=ro", uri=True, isolation_level=None)
                ) as reader,
            ):
                for number in range(messages):
                    raw = mailgen.notification(number, "labels_qp", MAILBOX)
                    wanted = mailgen.report_id(number)
                    started = time.perf_counter()
                    writer.append("INBOX", raw)
                    done = wait_until(functools.partial(_has_case, reader, wanted))
                    if done is None or process.poll() is not None:
                        raise RuntimeError(f"no case for message {number} within {WAIT_SECONDS}s")
                    case_latencies.append(done - started)
                    time.sleep(GAP_SECONDS)
                print(f"latency: {replies} replies, each waiting for its acknowledgement")
                for number in range(replies):
                    message_id, raw = reply(staff[number], f"QN-{number + 1:04d}", number)
                    started = time.perf_counter()
                    writer.append("INBOX", raw)
                    done = wait_until(functools.partial(sink.arrived, message_id))
                    if done is None:
                        raise RuntimeError(f"no acknowledgement of reply {number}")
                    ack_latencies.append(sink.arrivals[message_id] - started)
                    time.sleep(GAP_SECONDS)
                print(f"latency: a burst of {burst} notifications, {BURST_GAP_SECONDS}s apart")
                burst_latencies = append_burst(writer, reader, burst, first=messages)
    finally:
        sink.controller.stop()
    with contextlib.closing(sqlite3.connect(database)) as db:
        query = "SELECT count(*) FROM cases WHERE status = 'home_isolation'"
        applied = db.execute(query).fetchone()[0]
    if applied != replies:
        results.notes.append(f"latency: {applied} of {replies} replies were applied.")
    idle_p50, idle_p95 = percentile(baseline, 0.5), percentile(baseline, 0.95)
    for label, values, goal in (
        ("APPEND to case row", case_latencies, CASE_GOAL),
        ("reply APPEND to acknowledgement", ack_latencies, ACK_GOAL),
        (f"APPEND to case row, burst ({BURST_GAP_SECONDS}s apart)", burst_latencies, CASE_GOAL),
    ):
        if not values:
            continue
        p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
        details = {
            "samples": len(values),
            "max": round(max(values), 4),
            "over_5_s": sum(1 for value in values if value > 5.0),
        }
        results.add(
            Figure(
                "latency",
                f"{label}, p50",
                p50,
                "s",
                idle_p50,
                "raw IDLE notification, p50",
                details=details,
            )
        )
        results.add(
            Figure(
                "latency",
                f"{label}, p95",
                p95,
                "s",
                idle_p95,
                "raw IDLE notification, p95",
                goal=f"p95 < {goal:g} s",
                met=p95 < goal,
                details=details,
            )
        )


def append_burst(
    writer: IMAPClient, reader: sqlite3.Connection, count: int, *, first: int
) -> list[float]:
    """APPEND ``count`` notifications :data:`BURST_GAP_SECONDS` apart, whatever the daemon is
    doing (some arrive during a pass), watching for their case rows all along; the seconds
    from each APPEND to its case row."""
    appended: dict[str, float] = {}
    seen: dict[str, float] = {}

    def watch(until: float) -> None:
        while True:
            for wanted in appended.keys() - seen.keys():
                if _has_case(reader, wanted):
                    seen[wanted] = time.perf_counter()
            if len(seen) == count or time.perf_counter() >= until:
                return
            time.sleep(POLL_STEP)

    for number in range(first, first + count):
        raw = mailgen.notification(number, "labels_qp", MAILBOX)
        appended[mailgen.report_id(number)] = time.perf_counter()
        writer.append("INBOX", raw)
        watch(time.perf_counter() + BURST_GAP_SECONDS)
    watch(time.perf_counter() + WAIT_SECONDS)
    missing = count - len(seen)
    if missing:
        raise RuntimeError(f"{missing} message(s) of the burst had no case after {WAIT_SECONDS}s")
    return [seen[wanted] - appended[wanted] for wanted in appended]


def _polled(database: Path) -> bool:
    if not database.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT last_success_at FROM mailbox_state").fetchone()
    except sqlite3.Error:
        return False
    return row is not None and row[0] is not None


def _has_case(reader: sqlite3.Connection, wanted: str) -> bool:
    return (
        reader.execute("SELECT 1 FROM cases WHERE report_id = ?", (wanted,)).fetchone() is not None
    )
