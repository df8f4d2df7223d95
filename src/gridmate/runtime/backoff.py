"""Reconnect with exponential backoff, full jitter and a cap.

Every client (Kafka, MQTT, PostgreSQL, HTTP) uses :func:`reconnecting` so that
a dead peer is retried the same way everywhere and logged in the same words.
"""

from __future__ import annotations

import asyncio
import contextlib
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


async def tcp_answers(host: str, port: int) -> bool:
    """True if something accepts a TCP connection at ``host:port`` within a second."""
    try:
        async with asyncio.timeout(1.0):
            _reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _wait_or_probe(
    delay: float,
    stop: asyncio.Event,
    probe: Callable[[], Awaitable[bool]] | None,
    probe_every: float,
) -> bool:
    """Wait ``delay`` seconds, less once ``probe`` answers again after not answering.

    A peer that answered all along (refusing the login, say) gets the full delay:
    retrying it at once would only repeat the failure. True if ``stop`` was set.
    """
    if probe is None:
        return await sleep_unless_stopped(delay, stop)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + delay
    was_down = not await probe()
    while True:
        left = deadline - loop.time()
        if left <= 0:
            return stop.is_set()
        if await sleep_unless_stopped(min(probe_every, left), stop):
            return True
        if await probe():
            if was_down:
                return stop.is_set()
        else:
            was_down = True


async def reconnecting(
    session: Callable[[Backoff], Awaitable[None]],
    *,
    peer: str,
    stop: asyncio.Event,
    backoff: Backoff | None = None,
    retry_on: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError),
    on_failure: Callable[[BaseException], None] | None = None,
    probe: Callable[[], Awaitable[bool]] | None = None,
    probe_every: float = 1.0,
) -> None:
    """Run ``session`` until ``stop`` is set, reconnecting after failures.

    ``session`` gets the :class:`Backoff` and calls ``reset()`` once it is
    connected and working, so a long healthy session restarts from the short
    delay. It returns normally only when it saw ``stop``.

    ``probe`` (e.g. :func:`tcp_answers`) is a cheap check run every
    ``probe_every`` seconds while waiting: once the peer answers again, the
    wait ends, so a long backoff does not delay recovery by a minute.
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
            if await _wait_or_probe(delay, stop, probe, probe_every):
                return
