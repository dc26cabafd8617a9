"""The sweeper: the periodic round that makes expiry and restore independent of events.

Each round: restore any flight whose Redis data is missing or from an earlier Redis run,
expire every hold the deadline index says is due, expire from SQL's side the holds Redis
forgot, and settle payments that a dead pay left open. Every step is a compare-and-set, so
rounds of several processes may overlap.
"""

from __future__ import annotations

import asyncio
import logging
import time

from holdsvc.domain.expiry import Expirer
from holdsvc.domain.payments import PaymentRecovery
from holdsvc.domain.restore import Restorer
from persistence.outage import Outage

log = logging.getLogger(__name__)

RECONCILE_SEATS_EVERY_S = 30.0


async def sweep_round(
    restorer: Restorer,
    expirer: Expirer,
    recovery: PaymentRecovery,
    grace_ms: int,
    cause: str,
) -> None:
    await restorer.check()
    await expirer.sweep(cause)
    await expirer.reconcile(grace_ms)
    await recovery.run(grace_ms)


async def run_sweeper(
    restorer: Restorer,
    expirer: Expirer,
    recovery: PaymentRecovery,
    interval: float,
    grace_ms: int,
) -> None:
    """Sweep every ``interval`` seconds until cancelled; a failed round is logged and retried.

    Every ``RECONCILE_SEATS_EVERY_S`` a round also compares every booked seat in Redis with
    SQL: it reads every seat of every flight, so it runs far less often than the sweep.
    """
    last_reconcile = time.monotonic()
    outage = Outage(log, "sweep rounds")
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep_round(restorer, expirer, recovery, grace_ms, "sweeper")
            if time.monotonic() - last_reconcile > RECONCILE_SEATS_EVERY_S:
                last_reconcile = time.monotonic()
                await restorer.reconcile_all()
        except Exception as exc:
            outage.failed(exc)
        else:
            outage.ok()
