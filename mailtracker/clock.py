"""The wall clock the daemon, the pollers and the leases read, replaceable in tests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    """The current time, timezone-aware in UTC (the default ``Clock``)."""
    return dt.datetime.now(dt.UTC)
