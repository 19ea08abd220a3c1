"""Parsing on every core: a backlog of messages is parsed in worker processes, ahead of the
main process, which writes the cases of the messages parsed before.

Parsing is pure, so a result is as good in a worker as in the main process. Whatever goes
wrong with the workers (one killed, a result that does not come back) only means that the
messages concerned are parsed in the main process instead.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from zoneinfo import ZoneInfo

from mailtracker.parsing.message import ParsedMessage, parse_message

log = logging.getLogger(__name__)

CHUNK = 25
"""Messages handed to a worker at a time."""

Parsed = ParsedMessage | Exception
"""A parsed message, or what the parser raised on it."""


def parse_all(raws: Sequence[bytes], case_prefix: str, timezone: ZoneInfo) -> list[Parsed]:
    """``parse_message`` on each of ``raws`` (what runs in a worker)."""
    parsed: list[Parsed] = []
    for raw in raws:
        try:
            parsed.append(parse_message(raw, case_prefix=case_prefix, timezone=timezone))
        except Exception as error:  # reported for that message alone
            parsed.append(error)
    return parsed


class _Chunk:
    """Messages one worker parses together; ``take`` waits for the result of one of them."""

    def __init__(self, ids: Sequence[int], future: Future[list[Parsed]]) -> None:
        self._ids = ids
        self._future = future
        self._results: dict[int, Parsed] | None = None

    def take(self, message_id: int) -> Parsed | None:
        if self._results is None:
            try:
                self._results = dict(zip(self._ids, self._future.result(), strict=True))
            except Exception as error:  # a dead worker, a result that cannot be unpickled
                log.warning("a parsing worker failed (%s): parsed here", type(error).__name__)
                self._results = {}
        return self._results.pop(message_id, None)


class ParsePool:
    """Worker processes parsing messages; a context manager that stops them at its end.

    ``submit`` hands messages over; ``results`` waits for those of some of them, each handed
    out once.
    """

    def __init__(self, workers: int, *, case_prefix: str, timezone: ZoneInfo) -> None:
        # Spawned, not forked: a fork of a process running threads (pollers, the scheduler)
        # may copy a lock that another thread holds.
        self._executor = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn")
        )
        self._case_prefix = case_prefix
        self._timezone = timezone
        self._waiting: dict[int, _Chunk] = {}

    def __enter__(self) -> ParsePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._waiting

    def __len__(self) -> int:
        """How many submitted messages are waiting to be taken."""
        return len(self._waiting)

    def submit(self, messages: Sequence[tuple[int, bytes]]) -> None:
        """Start parsing ``(id, raw)`` pairs."""
        try:
            for start in range(0, len(messages), CHUNK):
                ids = [message_id for message_id, _ in messages[start : start + CHUNK]]
                raws = [raw for _, raw in messages[start : start + CHUNK]]
                chunk = _Chunk(
                    ids,
                    self._executor.submit(parse_all, raws, self._case_prefix, self._timezone),
                )
                self._waiting.update(dict.fromkeys(ids, chunk))
        except Exception as error:  # the pool is broken: the rest is parsed here
            log.warning("parsing workers unavailable (%s): parsed here", type(error).__name__)

    def results(self, ids: Iterable[int]) -> dict[int, Parsed]:
        """The results of those of ``ids`` that were submitted, waiting for them; a message
        whose worker failed is left out (the caller then parses it itself)."""
        found: dict[int, Parsed] = {}
        for message_id in ids:
            chunk = self._waiting.pop(message_id, None)
            result = chunk.take(message_id) if chunk is not None else None
            if result is not None:
                found[message_id] = result
        return found
