"""Readiness: whether the seat store (Redis) and the booking store (SQL) both answer."""

from __future__ import annotations

import logging

from holdsvc.domain.store import BookingStore
from holdsvc.seats.holds import HoldStore

log = logging.getLogger(__name__)


class Health:
    def __init__(self, holds: HoldStore, store: BookingStore) -> None:
        self._holds = holds
        self._store = store

    async def problems(self) -> dict[str, str]:
        """``{"redis"|"sql": "unavailable"}`` for each store that does not answer; {} if well."""
        problems = {}
        try:
            await self._holds.ping()
        except Exception as exc:
            log.warning("healthz: Redis: %s", exc)  # the detail (hosts, ports) stays in the log
            problems["redis"] = "unavailable"
        try:
            await self._store.ping()
        except Exception as exc:
            log.warning("healthz: SQL: %s", exc)
            problems["sql"] = "unavailable"
        return problems
