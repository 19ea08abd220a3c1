"""A real SMTP server for tests: aiosmtpd in-process on a free 127.0.0.1 port, keeping every
message it accepts. It can be stopped and started again on the same port (outage tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from servers import HOST, free_port, wait_listening


@dataclass(frozen=True)
class Captured:
    """One accepted message: envelope and bytes as received."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])


class SmtpCapture:
    """aiosmtpd ``Controller`` plus the list of messages it accepted (thread-safe)."""

    def __init__(self, port: int | None = None) -> None:
        self.host = HOST
        self.port = port or free_port()
        self._messages: list[Captured] = []
        self._changed = threading.Condition()
        self._controller: Controller | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        captured = Captured(envelope.mail_from, tuple(envelope.rcpt_tos), bytes(raw))
        with self._changed:
            self._messages.append(captured)
            self._changed.notify_all()
        return "250 OK"

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        if self._controller is None:
            self._controller = Controller(self, hostname=self.host, port=self.port)
            self._controller.start()
            wait_listening(self.port, up=True)

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
            wait_listening(self.port, up=False)

    @property
    def messages(self) -> list[Captured]:
        with self._changed:
            return list(self._messages)

    def wait_for(
        self, predicate: Callable[[list[Captured]], bool], timeout: float
    ) -> list[Captured]:
        """Wait until ``predicate(messages)`` holds; the messages (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(list(self._messages)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s; got {[m.subject for m in self._messages]}"
                    )
                self._changed.wait(min(left, 0.2))
            return list(self._messages)
