"""Parsing on every core: a backlog of stored messages is parsed in worker processes, a batch
ahead, while the main process writes the cases of the batch parsed before it.

Parsing is pure, so a result is as good in a worker as in the main process. Whatever goes
wrong with the workers (one killed, a result that does not come back) only means that the
messages concerned are parsed in the main process instead.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Mapping, Sequence
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


class Ahead:
    """Messages being parsed by the workers; ``results`` waits for them."""

    def __init__(self, chunks: Sequence[tuple[Sequence[int], Future[list[Parsed]]]]) -> None:
        self._chunks = chunks

    def results(self) -> Mapping[int, Parsed]:
        """Each message id's result; a chunk whose worker failed is left out (the caller then
        parses those messages itself)."""
        found: dict[int, Parsed] = {}
        for ids, future in self._chunks:
            try:
                found.update(zip(ids, future.result(), strict=True))
            except Exception as error:  # a dead worker, a result that cannot be unpickled
                log.warning("a parsing worker failed (%s): parsed here", type(error).__name__)
        return found


class ParsePool:
    """Worker processes parsing messages; a context manager that stops them at its end."""

    def __init__(self, workers: int, *, case_prefix: str, timezone: ZoneInfo) -> None:
        # Spawned, not forked: a fork of a process running threads (pollers, the scheduler)
        # may copy a lock that another thread holds.
        self._executor = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn")
        )
        self._case_prefix = case_prefix
        self._timezone = timezone

    def __enter__(self) -> ParsePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, messages: Sequence[tuple[int, bytes]]) -> Ahead:
        """Start parsing ``(id, raw)`` pairs."""
        chunks: list[tuple[Sequence[int], Future[list[Parsed]]]] = []
        try:
            for start in range(0, len(messages), CHUNK):
                chunk = messages[start : start + CHUNK]
                future = self._executor.submit(
                    parse_all, [raw for _, raw in chunk], self._case_prefix, self._timezone
                )
                chunks.append(([message_id for message_id, _ in chunk], future))
        except Exception as error:  # the pool is broken: the rest is parsed here
            log.warning("parsing workers unavailable (%s): parsed here", type(error).__name__)
        return Ahead(chunks)
