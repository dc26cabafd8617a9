"""The sweeper: the periodic round that makes expiry and restore independent of events.

Each round: restore any flight whose Redis data is missing or from an earlier Redis run,
expire every hold the deadline index says is due, and expire from SQL's side the holds Redis
forgot. Every step is a compare-and-set, so rounds of several processes may overlap.
"""

from __future__ import annotations

import asyncio
import logging

from holdsvc.expiry import Expirer
from holdsvc.restore import Restorer

log = logging.getLogger(__name__)


async def sweep_round(restorer: Restorer, expirer: Expirer, grace_ms: int, cause: str) -> None:
    await restorer.check()
    await expirer.sweep(cause)
    await expirer.reconcile(grace_ms)


async def run_sweeper(restorer: Restorer, expirer: Expirer, interval: float, grace_ms: int) -> None:
    """Sweep every ``interval`` seconds until cancelled; a failed round is logged and retried."""
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep_round(restorer, expirer, grace_ms, "sweeper")
        except Exception as exc:
            log.warning("sweep round failed: %s", exc)
