"""Stopping tasks: the caller's own cancellation is never swallowed."""

import asyncio

import pytest

from meshkit._tasks import ended, stop


async def test_a_timeout_around_stop_still_fires_while_the_task_cleans_up() -> None:
    """A task slow to clean up holds stop(); the caller's timeout still raises."""
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)  # noqa: TID251 (one loop turn: let the task start)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await stop(task)
    release.set()
    await asyncio.wait([task])
    assert task.cancelled()


async def test_a_task_that_failed_has_its_error_raised() -> None:
    async def fails() -> None:
        raise LookupError("gone")

    task = asyncio.create_task(fails())
    with pytest.raises(LookupError, match="gone"):
        await ended(task)
    await stop()  # nothing to stop: returns
