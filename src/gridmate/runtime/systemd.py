"""systemd service notifications: readiness, status, watchdog, stopping.

Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import sdnotify

from gridmate.runtime.logs import get_logger

log = get_logger("runtime.systemd")


class ServiceNotifier:
    def __init__(self) -> None:
        self._notifier = sdnotify.SystemdNotifier()
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))

    def _send(self, message: str) -> None:
        if self.enabled:
            self._notifier.notify(message)

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def stopping(self, status: str = "Stopping") -> None:
        self._send(f"STOPPING=1\nSTATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Half the watchdog timeout systemd asked for, or None when there is none."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        timeout = int(usec) / 1_000_000
    except ValueError:
        return None
    return timeout / 2 if timeout > 0 else None


async def watchdog_loop(
    notifier: ServiceNotifier,
    interval: float,
    health_problems: Callable[[], list[str]],
) -> None:
    """Ping the watchdog from the event loop while the component reports itself healthy.

    Running on the event loop is the point: a blocked loop stops the pings and
    systemd restarts the service.
    """
    unhealthy_since_ping = False
    while True:
        problems = health_problems()
        if problems:
            if not unhealthy_since_ping:
                log.warning(
                    "health check failing; withholding watchdog ping", problems="; ".join(problems)
                )
            unhealthy_since_ping = True
            notifier.status("Unhealthy: " + "; ".join(problems))
        else:
            if unhealthy_since_ping:
                log.info("health check passing again")
            unhealthy_since_ping = False
            notifier.watchdog()
        await asyncio.sleep(interval)
