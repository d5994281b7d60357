"""A background loop that runs a step whenever it is woken, and on a slow timer as a safety net.

Relays and processors are woken by the code that commits their work, in the same process, right
after the commit: no fixed timer sits in the hot path. The timer only finds work that another
replica or a crashed process left behind. A failing step is retried with backoff (`shared/retry`),
and how long it has been failing is what readiness reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from orbilnot.shared.retry import FailureTracker, backoff

log = logging.getLogger(__name__)

Step = Callable[[], Awaitable[bool]]
"""One round of work; returns True when there may be more right away (a full batch)."""


class Worker:
    def __init__(self, name: str, step: Step, *, poll_interval_s: float):
        self.name = name
        self._step = step
        self._poll_interval_s = poll_interval_s
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.tracker = FailureTracker(name)

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
        while not self._stopping:
            self._wakeup.clear()
            more = False
            try:
                # Any failure is retried: a step that fails on one event sets it aside itself, so
                # what reaches here is the database or the broker being away, or a bug.
                async for attempt in backoff(
                    self.name,
                    retry_on=lambda _: True,
                    tracker=self.tracker,
                    sleep=self._backoff_sleep,
                    give_up=lambda: self._stopping,
                ):
                    with attempt:
                        more = await self._step()
            except Exception:
                log.exception("%s failed while stopping", self.name)
                return
            self.tracker.succeeded()
            if not more:
                await self._sleep(self._poll_interval_s)

    async def _backoff_sleep(self, seconds: float) -> None:
        # A wake-up cuts the wait short (new work may succeed where the last try failed), once.
        await self._sleep(seconds)
        self._wakeup.clear()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)
