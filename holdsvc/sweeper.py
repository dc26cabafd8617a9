"""The sweeper: the periodic round that makes expiry and restore independent of events.

Each round: restore any flight whose Redis data is missing or from an earlier Redis run,
expire every hold the deadline index says is due, expire from SQL's side the holds Redis
forgot, and settle payments that a dead pay left open. Every step is a compare-and-set, so
rounds of several processes may overlap.
"""

from __future__ import annotations

import asyncio
import logging

from holdsvc.expiry import Expirer
from holdsvc.recovery import PaymentRecovery
from holdsvc.restore import Restorer

log = logging.getLogger(__name__)


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
    """Sweep every ``interval`` seconds until cancelled; a failed round is logged and retried."""
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep_round(restorer, expirer, recovery, grace_ms, "sweeper")
        except Exception as exc:
            log.warning("sweep round failed: %s", exc)
