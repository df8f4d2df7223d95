"""Notifications shared by every component: email and Apprise targets, each a channel.

Usage from a component::

    notifier = Notifier(settings.notify, settings.state_directory,
                        clock=daemon.clock, registry=daemon.registry, source="energy")
    await notifier.start()
    await notifier.send(Event(EventKind.telemetry_stale, subject=..., what_happened=...,
                              what_gridmate_did=..., what_you_can_do=..., key=vin))
    await notifier.resolve(EventKind.telemetry_stale, key=vin)
    await notifier.close()
"""

from gridmate.notify.events import Event, EventKind, InlineImage, Level
from gridmate.notify.notifier import Notifier
from gridmate.notify.settings import NotifySettings, Recipients

__all__ = ["Event", "EventKind", "InlineImage", "Level", "Notifier", "NotifySettings", "Recipients"]
