"""A thin smtplib adapter: connect (starttls / ssl / none), log in when configured, send."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Sequence
from email.utils import parseaddr
from types import TracebackType

from mailtracker.config import SmtpSettings

Refused = dict[str, tuple[int, bytes]]


class SmtpTransport:
    """One SMTP session, used as a context manager; ``send`` returns the refused recipients."""

    def __init__(self, settings: SmtpSettings, *, timeout: float = 30.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self.envelope_sender = parseaddr(settings.sender)[1]
        self._client: smtplib.SMTP | None = None

    def __enter__(self) -> SmtpTransport:
        settings = self.settings
        context = ssl.create_default_context()
        client: smtplib.SMTP
        if settings.security == "ssl":
            client = smtplib.SMTP_SSL(
                settings.host, settings.port, timeout=self.timeout, context=context
            )
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=self.timeout)
        try:
            client.ehlo()
            if settings.security == "starttls":
                client.starttls(context=context)
                client.ehlo()
            if settings.username:
                password = settings.password.reveal() if settings.password else ""
                client.login(settings.username, password)
        except BaseException:
            client.close()
            raise
        self._client = client
        return self

    def send(self, recipients: Sequence[str], raw: bytes) -> Refused:
        """Send ``raw`` to ``recipients``; raises smtplib errors when nobody accepted it."""
        if self._client is None:
            raise RuntimeError("the SMTP session is not open")
        return self._client.sendmail(self.envelope_sender, list(recipients), raw)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()
