"""Small asyncio helpers shared by the EPP's background loops."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has unwound; None does nothing.

    A loop that failed earlier has its exception swallowed here (it was logged where it
    happened): stopping must not fail because the thing being stopped already had.
    """
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
