"""Case statuses, transitions and deadlines (pure; no clock, no I/O)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rules:
    """The ``[rules]`` section: deadlines and follow-up intervals."""

    verify_within: dt.timedelta = dt.timedelta(hours=24)
    monitoring_days: int = 14
    home_isolation_days: int = 14
    facility_isolation_days: int = 14
    followup_every: dt.timedelta = dt.timedelta(days=1)
    facility_followup_every: dt.timedelta = dt.timedelta(hours=12)
