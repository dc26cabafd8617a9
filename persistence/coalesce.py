"""Calls by key issued in the same event-loop turn, answered by one query (or one batch).

The reader is one SQLite connection on one thread: every query is a hop to that thread and
back, and under load the hops queued behind each other (the lifecycle bench: a booking read
waited 18 ms on average, two per pay). Coalescing them turns N hops into one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
A = TypeVar("A")
V = TypeVar("V")

# SQLite binds at most 32,766 variables; far fewer keep each query short.
MAX_KEYS = 500


class Coalescer(Generic[K, A, V]):
    """``fetch`` gets every key of a turn with the argument its first caller gave."""

    def __init__(self, fetch: Callable[[dict[K, A]], Awaitable[dict[K, V]]]) -> None:
        self._fetch = fetch
        self._waiting: dict[K, list[asyncio.Future[V | None]]] = {}
        self._args: dict[K, A] = {}
        self._scheduled = False
        self._running: set[asyncio.Task[None]] = set()

    async def get(self, key: K, arg: A) -> V | None:
        """The value for ``key``, or None when the query found none."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V | None] = loop.create_future()
        self._waiting.setdefault(key, []).append(future)
        self._args.setdefault(key, arg)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        waiting, self._waiting = self._waiting, {}
        args, self._args = self._args, {}
        keys = list(waiting)
        for start in range(0, len(keys), MAX_KEYS):
            chunk = {k: waiting[k] for k in keys[start : start + MAX_KEYS]}
            task = asyncio.get_running_loop().create_task(
                self._answer(chunk, {k: args[k] for k in chunk})
            )
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _answer(
        self, waiting: dict[K, list[asyncio.Future[V | None]]], args: dict[K, A]
    ) -> None:
        try:
            found = await self._fetch(args)
        except BaseException as exc:
            for futures in waiting.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for key, futures in waiting.items():
            value = found.get(key)
            for future in futures:
                if not future.done():
                    future.set_result(value)
