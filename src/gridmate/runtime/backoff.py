"""Reconnect with exponential backoff, full jitter and a cap.

Every client (Kafka, MQTT, PostgreSQL, HTTP) uses :func:`reconnecting` so that
a dead peer is retried the same way everywhere and logged in the same words.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gridmate.runtime.logs import get_logger

log = get_logger("runtime.backoff")


@dataclass
class Backoff:
    """Delays of ``initial * factor**n`` capped at ``cap``, with full jitter."""

    initial: float = 0.5
    cap: float = 60.0
    factor: float = 2.0
    jitter: bool = True
    attempts: int = field(default=0, init=False)
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * self.factor**self.attempts)
        self.attempts += 1
        if not self.jitter:
            return ceiling
        # Full jitter, but never under a tenth of the ceiling, so retries do not hammer.
        return self._rng.uniform(ceiling / 10, ceiling)

    def reset(self) -> None:
        self.attempts = 0


async def sleep_unless_stopped(seconds: float, stop: asyncio.Event) -> bool:
    """Sleep up to ``seconds``; True if ``stop`` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


async def reconnecting(
    session: Callable[[Backoff], Awaitable[None]],
    *,
    peer: str,
    stop: asyncio.Event,
    backoff: Backoff | None = None,
    retry_on: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError),
    on_failure: Callable[[BaseException], None] | None = None,
) -> None:
    """Run ``session`` until ``stop`` is set, reconnecting after failures.

    ``session`` gets the :class:`Backoff` and calls ``reset()`` once it is
    connected and working, so a long healthy session restarts from the short
    delay. It returns normally only when it saw ``stop``.
    """
    backoff = backoff or Backoff()
    while not stop.is_set():
        try:
            await session(backoff)
            return
        except retry_on as error:
            if stop.is_set():
                return
            if on_failure is not None:
                on_failure(error)
            delay = backoff.next_delay()
            log.warning(
                f"connection to {peer} failed; retrying",
                error=f"{type(error).__name__}: {error}" if str(error) else type(error).__name__,
                retry_in=f"{delay:.1f}s",
                attempt=backoff.attempts,
            )
            if await sleep_unless_stopped(delay, stop):
                return
