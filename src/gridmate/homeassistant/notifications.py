"""Notifications as a Home Assistant MQTT ``event`` entity, the same for every component.

Each component that talks to Home Assistant gives its notifier a listener
(:meth:`gridmate.notify.Notifier.add_listener`) that publishes every new event,
not retained, on the entity's topic. The event type is the notification level; the
kind, title and text are attributes, so an automation can forward them to a phone.
"""

from __future__ import annotations

from typing import Any

from gridmate.notify import Event, Level

EVENT_TYPES = [level.value for level in Level]
MAX_PENDING = 50
"""Events kept while the broker is away; older ones are dropped (email has them)."""


def event_component(unique_id: str, topic: str) -> dict[str, Any]:
    """The discovery configuration of a "Notifications" event entity."""
    return {
        "p": "event",
        "name": "Notifications",
        "uniq_id": unique_id,
        "stat_t": topic,
        "evt_typ": EVENT_TYPES,
        "ic": "mdi:bell",
    }


def notification_payload(event: Event) -> dict[str, Any]:
    """What the event entity gets: the level as event type, the rest as attributes."""
    return {
        "event_type": event.effective_level.value,
        "kind": event.kind.value,
        "title": event.subject,
        "text": event.what_happened,
        "action": event.what_gridmate_did,
        "advice": event.what_you_can_do,
        "key": event.key,
    }
