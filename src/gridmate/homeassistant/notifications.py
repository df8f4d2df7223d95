"""Notifications as a Home Assistant MQTT ``event`` entity, the same for every component.

Each component that talks to Home Assistant gives its notifier a listener
(:meth:`gridmate.notify.Notifier.add_listener`) that publishes every new event,
not retained, on the entity's topic. The event type is the notification level; the
kind, title and text are attributes, so an automation can forward them to a phone.

The daemons (energy, vehicles) carry the entity on the device they keep online.
The commands a timer or systemd runs for a few seconds (report, backup) use
:class:`NotificationDevice`: a device of its own whose discovery document is
retained and has no availability topic, since an event entity has no state that
could go stale between two runs, and an availability topic would show it
unavailable for all the time the command is not running. Each run connects once,
announces the device if the retained document on the broker is missing or differs,
fires its events (QoS 1, never retained: an event happens once, and a retained one
would fire again whenever Home Assistant subscribes) and disconnects.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from gridmate.homeassistant.discovery import device_config_topic, device_document, encode
from gridmate.homeassistant.link import MqttUnavailable, default_client_id
from gridmate.homeassistant.settings import NotificationDeviceSettings
from gridmate.notify import Event, Level
from gridmate.runtime.logs import get_logger
from gridmate.runtime.mqtt import mqtt_client

log = get_logger("homeassistant.notifications")

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


@dataclass
class NotificationDevice:
    """A short-lived command's notifications as a Home Assistant device of its own.

    Hand :meth:`notification` to the notifier as a listener, then call
    :meth:`publish` once before the process ends.
    """

    settings: NotificationDeviceSettings
    component: str
    """Names the device ("gridmate <component>") and its topics."""
    model: str
    events: list[Event] = field(default_factory=list)

    @property
    def object_id(self) -> str:
        return f"{self.settings.node_name}_{self.component}"

    @property
    def topic(self) -> str:
        """The event entity's topic."""
        return f"{self.settings.base_topic}/{self.component}/notifications"

    @property
    def discovery_topic(self) -> str:
        return device_config_topic(self.settings.discovery_prefix, self.object_id)

    def document(self) -> dict[str, Any]:
        device = {
            "ids": [self.object_id],
            "name": f"gridmate {self.component}",
            "mf": "gridmate",
            "mdl": self.model,
        }
        if self.settings.configuration_url:
            device["cu"] = self.settings.configuration_url
        component = event_component(f"{self.object_id}_notifications", self.topic)
        return device_document(
            device,
            {f"{self.component}_notifications": component},
            availability=None,
            support_url=self.settings.support_url,
        )

    def notification(self, event: Event) -> None:
        """The notifier reported ``event``: fire it with the next :meth:`publish`."""
        self.events.append(event)

    async def publish(self) -> int:
        """Announce the device if needed and fire the collected events; returns how many.

        Raises :class:`MqttUnavailable` (a one-line reason) when the broker cannot be
        reached or does not acknowledge within ``timeout_seconds``; the events stay
        collected, so a caller may try again.
        """
        settings = self.settings
        try:
            async with asyncio.timeout(settings.timeout_seconds):
                return await self._publish()
        except TimeoutError:
            raise MqttUnavailable(
                f"no answer from {settings.mqtt.host}:{settings.mqtt.port} within "
                f"{settings.timeout_seconds:g} s"
            ) from None
        except (aiomqtt.MqttError, OSError) as error:
            reason = str(error) or type(error).__name__
            raise MqttUnavailable(f"{settings.mqtt.host}:{settings.mqtt.port}: {reason}") from None

    async def try_publish(self) -> bool:
        """:meth:`publish`, with a failure logged rather than raised; True when done."""
        try:
            fired = await self.publish()
        except MqttUnavailable as error:
            log.warning(
                "notifications not published to Home Assistant",
                error=str(error),
                events=len(self.events),
            )
            return False
        if fired:
            log.info("notifications published to Home Assistant", events=fired)
        return True

    async def _publish(self) -> int:
        document = encode(self.document())
        client = mqtt_client(
            self.settings.mqtt,
            identifier=default_client_id(self.settings.node_name, self.component),
        )
        async with client:
            announced = await self._retained_document(client)
            if announced != document:
                await client.publish(self.discovery_topic, document, qos=1, retain=True)
                log.info("announced to Home Assistant", device=self.object_id)
                if self.events:
                    # Home Assistant subscribes to the event topic only once it has
                    # processed the discovery document; an event before that is lost.
                    await asyncio.sleep(self.settings.announce_wait_seconds)
            fired = 0
            while self.events:
                payload = encode(notification_payload(self.events[0]))
                await client.publish(self.topic, payload, qos=1, retain=False)
                self.events.pop(0)
                fired += 1
        return fired

    async def _retained_document(self, client: aiomqtt.Client) -> bytes | None:
        """The discovery document the broker keeps for this device, if any.

        Retained messages arrive right after the subscription; a marker published
        afterwards arrives after them.
        """
        marker = f"{self.settings.base_topic}/{self.component}/_sync-{uuid.uuid4().hex[:12]}"
        await client.subscribe(self.discovery_topic, qos=1)
        await client.subscribe(marker, qos=1)
        await client.publish(marker, b"", qos=1, retain=False)
        found: bytes | None = None
        async for message in client.messages:
            if str(message.topic) == marker:
                break
            if isinstance(message.payload, bytes | bytearray):
                found = bytes(message.payload)
        return found
