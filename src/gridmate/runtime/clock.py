"""Time as the components see it: the wall clock, or an accelerated simulation."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class SimulatedClock:
    """Simulated time running ``speed`` times faster than real time.

    ``jump_to`` skips ahead (never back), so a demo can pass quiet hours at once.
    """

    def __init__(self, start: datetime, speed: float = 1.0) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._origin = start.astimezone(UTC)
        self._real_origin = time.monotonic()
        self.speed = speed

    def now(self) -> datetime:
        elapsed = (time.monotonic() - self._real_origin) * self.speed
        return self._origin + timedelta(seconds=elapsed)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    def jump_to(self, when: datetime) -> None:
        ahead = (when.astimezone(UTC) - self.now()).total_seconds()
        if ahead > 0:
            self._origin += timedelta(seconds=ahead)


async def sleep_or_wake(clock: Clock, seconds: float, wake: asyncio.Event) -> bool:
    """Sleep ``seconds`` of ``clock`` time, ending early when ``wake`` is set.

    Returns True when ``wake`` ended the sleep (or was already set).
    """
    if wake.is_set():
        return True
    if seconds <= 0:
        return False
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    waker = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, waker):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return wake.is_set()
