"""``python -m mailtracker run`` as a subprocess, its log in a file: what the daemon, fault,
personal-data and several-instance tests start, stop and kill."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from servers import ImapServer

ROOT = Path(__file__).resolve().parents[1]
STOP_TIMEOUT = 20.0
SECRET_ENV = {"MT_RUN_SECRET": "run-test-secret"}


def midday_zone() -> str:
    """A fixed-offset zone where it is now about noon, so no test crosses local midnight."""
    offset = (12 - dt.datetime.now(dt.UTC).hour) % 24
    offset = offset - 24 if offset > 14 else offset
    if offset == 0:
        return "Etc/GMT"
    return f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


def write_run_config(
    path: Path,
    *,
    database: str,
    dovecot: ImapServer,
    staff: Mapping[str, str],
    smtp_port: int | None = None,
    sender: str = "tracker@example.org",
    zone: str = "Asia/Ho_Chi_Minh",
    digest_at: dt.time = dt.time(7, 0),
    units: Sequence[str] = ("cdc", "med"),
    tracker_extra: Sequence[str] = (),
) -> dict[str, str]:
    """Write ``path``: units ``cdc`` (lead, vi) and ``med`` (member, en) of ``units``, each
    with its ``staff`` address and one mailbox on ``dovecot`` (IDLE); SMTP when
    ``smtp_port`` is given. Returns the environment its secrets come from."""
    env = dict(SECRET_ENV)
    lines = [
        "[tracker]",
        f'database = "{database}"',
        f'timezone = "{zone}"',
        'case_prefix = "QN"',
        'secret_key = "env:MT_RUN_SECRET"',
        *tracker_extra,
        "",
    ]
    if smtp_port is not None:
        lines += [
            "[smtp]",
            'host = "127.0.0.1"',
            f"port = {smtp_port}",
            'security = "none"',
            f'from = "Mailtracker QN <{sender}>"',
            "",
        ]
    for unit_id in units:
        user = f"{unit_id}-inbox@example.org"
        if user not in dovecot.passwords:
            dovecot.add_user(user, f"pw-{unit_id}")
        env[f"MT_RUN_IMAP_{unit_id.upper()}"] = dovecot.passwords[user]
        lines += [
            "[[units]]",
            f'id = "{unit_id}"',
            f'name = "Unit {unit_id}"',
            f'role = "{"lead" if unit_id == "cdc" else "member"}"',
            f'language = "{"vi" if unit_id == "cdc" else "en"}"',
            f'staff = ["{staff[unit_id]}"]',
            f'digest_to = ["{staff[unit_id]}"]',
            f"digest_at = {digest_at.strftime('%H:%M:%S')}",
            "",
            "  [[units.mailboxes]]",
            f'  host = "{dovecot.host}"',
            f"  port = {dovecot.port}",
            '  security = "none"',
            f'  username = "{user}"',
            f'  password = "env:MT_RUN_IMAP_{unit_id.upper()}"',
            "  idle = true",
            '  poll_every = "60s"',
            "",
        ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return env


class RunningDaemon:
    """One ``mailtracker run`` process. With ``started_within``, the constructor waits that
    many seconds for its "daemon started" line; without, it returns at once (to kill it at
    any moment of its start)."""

    def __init__(
        self,
        config: Path,
        env: Mapping[str, str],
        log: Path,
        *,
        level: str = "INFO",
        started_within: float | None = 30.0,
    ) -> None:
        self.log = log
        command = [sys.executable, "-m", "mailtracker", "--config", str(config)]
        with log.open("ab") as stderr:
            self.process = subprocess.Popen(
                [*command, "--log-level", level, "run"],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, **env},
            )
        if started_within is not None:
            self.wait_for_log("daemon started", timeout=started_within)

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_for_log(self, needle: str, timeout: float) -> None:
        """Wait until ``needle`` is in the log; AssertionError when the daemon exits first or
        ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited ({self.process.returncode}):\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} in the log after {timeout}s:\n{self.text()}")
            time.sleep(0.1)

    @property
    def instance(self) -> str:
        """The instance id of its "daemon started" line."""
        found = re.search(r"daemon started: .*, instance (\S+)", self.text())
        assert found is not None, self.text()
        return found.group(1)

    def polls(self, user: str) -> bool:
        """Whether it has connected to ``user``'s mailbox to poll it."""
        return any(
            user in line and "connected; waiting" in line for line in self.text().splitlines()
        )

    def stop(self) -> float:
        """SIGTERM; the seconds it took to exit, which it must do with status 0."""
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"daemon ignored SIGTERM:\n{self.text()[-3000:]}") from None
        assert code == 0, f"daemon exited {code}:\n{self.text()[-3000:]}"
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as a power cut would do."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
