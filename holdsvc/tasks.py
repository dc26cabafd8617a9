"""Background tasks that stop when told to, even when a cancellation is lost on the way.

On Python 3.11, ``asyncio.wait_for`` returns its inner result instead of raising when the
cancellation arrives in the same loop turn as that result (CPython gh-86296, fixed in 3.12).
redis-py wraps every command's send in ``wait_for`` when a socket timeout is set, so a sweeper
cancelled at shutdown could swallow it and sweep forever, and the shutdown waiting on it with
it: a test teardown hung that way in CI. So a task that outlives its cancellation is cancelled
again, and where it was stuck is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

log = logging.getLogger(__name__)

# Long enough for a task's own clean-up (closing a pub/sub connection) to finish after one
# cancellation; a task still running after it has lost the cancellation.
STOP_GRACE_S = 2.0


async def stop(task: asyncio.Task[Any], grace: float = STOP_GRACE_S) -> None:
    """Cancel ``task`` until it ends; re-raise what it raised, unless that is the cancellation."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=grace)
        if not task.done():
            where = io.StringIO()
            task.print_stack(file=where)
            log.error(
                "task %s still runs %.1f s after its cancellation: cancelling again\n%s",
                task.get_name(),
                grace,
                where.getvalue(),
            )
    if not task.cancelled():
        task.result()


@contextlib.asynccontextmanager
async def background(
    work: Coroutine[Any, Any, None], name: str, grace: float = STOP_GRACE_S
) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``work`` as a task for the life of the block; stop it on the way out."""
    task = asyncio.create_task(work, name=name)
    try:
        yield task
    finally:
        await stop(task, grace)
