"""Readiness: whether the seat store (Redis) and the booking store (SQL) both answer, and
whether the flights are restored into the Redis that answers."""

from __future__ import annotations

import logging

from holdsvc.domain.restore import Restorer
from holdsvc.domain.store import BookingStore
from holdsvc.seats.holds import HoldStore
from persistence.outage import Outage

__all__ = ["Health", "Outage"]

log = logging.getLogger(__name__)


class Health:
    def __init__(self, holds: HoldStore, store: BookingStore, restorer: Restorer) -> None:
        self._holds = holds
        self._store = store
        self._restorer = restorer

    async def problems(self, *, restored: bool = False) -> dict[str, str]:
        """``{"redis"|"sql": "unavailable"}`` for each store that does not answer; with
        ``restored``, ``{"restore": "in progress"}`` until the running Redis process has been
        given every flight's booked seats. {} when all is well."""
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
        if restored and "redis" not in problems:
            try:
                run_id = await self._holds.server_run_id()
            except Exception as exc:
                log.warning("readyz: Redis: %s", exc)
                problems["redis"] = "unavailable"
            else:
                if run_id != self._restorer.restored_run:
                    problems["restore"] = "in progress"
        return problems
