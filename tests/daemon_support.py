"""``python -m mailtracker run`` as a subprocess, its log in a file: what the daemon, fault,
personal-data and several-instance tests start, stop and kill."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STOP_TIMEOUT = 20.0


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
