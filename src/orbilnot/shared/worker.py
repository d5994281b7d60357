"""A background loop that runs a step whenever it is woken, and on a slow timer as a safety net.

Relays and processors are woken by the code that commits their work, in the same process, right
after the commit: no fixed timer sits in the hot path. The timer only finds work that another
replica or a crashed process left behind. A failing step backs off and tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Step = Callable[[], Awaitable[bool]]
"""One round of work; returns True when there may be more right away (a full batch)."""


class Worker:
    def __init__(self, name: str, step: Step, *, poll_interval_s: float, max_backoff_s: float = 5.0):
        self.name = name
        self._step = step
        self._poll_interval_s = poll_interval_s
        self._max_backoff_s = max_backoff_s
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.healthy = True

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Let the current step finish (it holds a transaction), then end the loop."""
        self._stopping = True
        self._wakeup.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff_s = 0.05
        while not self._stopping:
            self._wakeup.clear()
            try:
                more = await self._step()
                backoff_s = 0.05
                self.healthy = True
            except Exception:
                self.healthy = False
                log.exception("%s failed; retrying in %.2fs", self.name, backoff_s)
                await self._sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self._max_backoff_s)
                continue
            if not more:
                await self._sleep(self._poll_interval_s)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)
