"""Messages to a person when a restore or a backup fails, through gridmate's notifier."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from gridmate.backup.preseed import Outcome, Result
from gridmate.backup.settings import BackupSettings
from gridmate.homeassistant.notifications import NotificationDevice
from gridmate.notify import Event, EventKind, Level, Notifier
from gridmate.runtime.logs import get_logger

log = get_logger("backup.notices")

FLUSH_SECONDS = 15.0


def restore_event(outcome: Outcome) -> Event | None:
    """The message for a preseed outcome, or None when nobody needs to hear of it."""
    if outcome.result is Result.started_empty:
        did = (
            "It started the service on an empty target, as on_failure = 'start-empty' asks, "
            "and marked the target complete so it will not be restored over later."
        )
        level = Level.WARNING
    elif outcome.result in (Result.refused, Result.failed):
        did = (
            "It did not start the service, so nothing can be written over the data that "
            "should come back."
        )
        level = Level.CRITICAL
    else:
        return None
    failures = outcome.failures()
    return Event(
        EventKind.restore_failed,
        subject=f"{outcome.target} could not be restored before its first start",
        what_happened=outcome.message + ".",
        what_gridmate_did=did,
        what_you_can_do=(
            f"Run 'gridmate preseed --dry-run --target {outcome.target} --config FILE' to see "
            "what each method finds, fix the cause (NAS reachable? restic password? pool "
            "imported?), then restart the preseed unit. docs/backup.md explains each method."
        ),
        key=outcome.target,
        level=level,
        details=tuple((f"method {i + 1}", text) for i, text in enumerate(failures)),
    )


def _home_assistant(settings: BackupSettings) -> NotificationDevice | None:
    if not settings.ha_device.enable:
        return None
    return NotificationDevice(settings.ha_device, "backup", "Backup and restore")


async def _send(settings: BackupSettings, events: Sequence[Event]) -> None:
    if not events:
        return
    notifier = Notifier(settings.notify, settings.state_directory, source="backup")
    home_assistant = _home_assistant(settings)
    if home_assistant is not None:
        notifier.add_listener(home_assistant.notification)
    try:
        await notifier.start()
        for event in events:
            await notifier.send(event)
        await notifier.flush(FLUSH_SECONDS)
    except Exception as error:  # the outcome itself is already logged
        log.error("could not send the notice", error=f"{type(error).__name__}: {error}")
    finally:
        await notifier.close()
    if home_assistant is not None:
        await home_assistant.try_publish()


async def announce(settings: BackupSettings) -> None:
    """Announce the Home Assistant device (when configured) without an event, so its
    Notifications entity exists before the first failure."""
    home_assistant = _home_assistant(settings)
    if home_assistant is not None:
        await home_assistant.try_publish()


async def notify_outcomes(settings: BackupSettings, outcomes: Sequence[Outcome]) -> None:
    events = [e for o in outcomes if (e := restore_event(o)) is not None]
    await _send(settings, events)


async def notify_backup_failure(
    settings: BackupSettings, kind: str, job: str, reason: str, record: dict[str, Any]
) -> None:
    last = record.get("last_success")
    since = (
        f"The last successful {kind} finished at "
        f"{datetime.fromtimestamp(float(last), UTC):%Y-%m-%d %H:%M} UTC."
        if last
        else f"No successful {kind} of this job has been recorded yet."
    )
    event = Event(
        EventKind.backup_failed,
        subject=f"The {kind} {job} failed",
        what_happened=f"The {kind} job {job} ended with '{reason}'. {since}",
        what_gridmate_did="It kept the last success time, so the freshness alert still "
        "counts from the last good run.",
        what_you_can_do=f"Read the job's log (journalctl -u restic-backups-{job} or the "
        "syncoid unit) and run it again once the cause is fixed.",
        key=f"{kind}:{job}",
    )
    await _send(settings, [event])
