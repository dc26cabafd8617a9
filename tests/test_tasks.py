"""Background tasks stop at shutdown even when a cancellation is lost (Python 3.11 wait_for)."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from holdsvc.tasks import background


async def test_a_loop_that_loses_its_cancellation_in_wait_for_is_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The loop waits on results that arrive exactly when the cancellation does: Python 3.11's
    # wait_for then returns the result and the cancellation is gone.
    loop = asyncio.get_running_loop()
    rounds = 0
    pending: list[asyncio.Future[int]] = []

    async def sweeper() -> None:
        nonlocal rounds
        while True:
            fut: asyncio.Future[int] = loop.create_future()
            pending.append(fut)
            await asyncio.wait_for(fut, 5)
            rounds += 1

    async with background(sweeper(), "sweeper", grace=0.2) as task:
        await asyncio.sleep(0)
        pending[-1].set_result(1)  # leaving the block cancels in this same loop turn
    assert task.cancelled()
    if sys.version_info < (3, 12):  # the first cancellation was swallowed: cancelled again
        assert rounds == 1
        assert "task sweeper still runs" in caplog.text


async def test_a_task_that_ignores_one_cancellation_is_cancelled_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caught = 0

    async def stubborn() -> None:
        nonlocal caught
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                caught += 1
                if caught == 1:
                    continue
                raise

    with caplog.at_level(logging.ERROR, logger="holdsvc.tasks"):
        async with background(stubborn(), "stubborn", grace=0.1) as task:
            await asyncio.sleep(0.03)
    assert task.cancelled()
    assert caught == 2
    assert "task stubborn still runs" in caplog.text
    assert "in stubborn" in caplog.text  # where it was stuck


async def test_a_task_that_failed_raises_on_the_way_out() -> None:
    async def broken() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        async with background(broken(), "broken"):
            await asyncio.sleep(0.01)
