"""Telling a person that a service stopped with an error."""

from __future__ import annotations

from pathlib import Path

from gridmate.notify.events import Event, EventKind
from gridmate.notify.notifier import Notifier
from gridmate.notify.settings import NotifySettings


def failure_event(component: str, error: BaseException, *, was_ready: bool) -> Event:
    what = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if was_ready:
        happened = f"gridmate's {component} service was running and stopped with an error: {what}."
    else:
        happened = f"gridmate's {component} service could not start: {what}."
    return Event(
        EventKind.component_start_failed,
        subject=f"gridmate {component} stopped with an error",
        what_happened=happened,
        what_gridmate_did=(
            "systemd restarts the service; you get one message while it keeps failing and "
            "one when it runs again."
        ),
        what_you_can_do=(
            f"Read the log with 'journalctl -u gridmate-{component}' and check the "
            f"configuration with 'gridmate {component} check-config'."
        ),
        key=component,
    )


async def notify_failure(
    component: str,
    settings: NotifySettings,
    state_directory: Path,
    error: BaseException,
    *,
    was_ready: bool,
    within_seconds: float = 15.0,
) -> None:
    """Queue the message and try to deliver it; what is not delivered stays queued on disk."""
    notifier = Notifier(settings, state_directory, source=component)
    await notifier.start()
    try:
        await notifier.send(failure_event(component, error, was_ready=was_ready))
        await notifier.flush(within_seconds)
    finally:
        await notifier.close()


async def resolve_failure(notifier: Notifier, component: str) -> None:
    """Called once a component is serving again."""
    await notifier.resolve(EventKind.component_start_failed, key=component)
