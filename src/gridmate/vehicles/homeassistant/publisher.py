"""Decides which MQTT messages the vehicle state needs, and when.

The publisher knows only the state store and the catalogue. Sources report what
each record changed (:meth:`Publisher.mark`); :meth:`Publisher.take` then returns one
batch with, per changed vehicle, its state document (and its location, alerts or
discovery document when those changed). Many records about one vehicle between two
batches cost one publish; records that changed nothing cost none, and a record that
only confirms known values refreshes the state document at most every
``touch_interval`` seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntFlag

from gridmate.homeassistant.link import Message
from gridmate.homeassistant.notifications import MAX_PENDING, notification_payload
from gridmate.notify import Event
from gridmate.vehicles.catalogue import is_extra
from gridmate.vehicles.homeassistant.controls import CONTROL_INPUTS, CONTROLS, slider_range
from gridmate.vehicles.homeassistant.discovery import (
    Topics,
    alerts_document,
    destination_document,
    discovery_document,
    encode,
    entities_of,
    hub_discovery_document,
    location_document,
    state_document,
    vehicle_name,
)
from gridmate.vehicles.state import Applied, StateStore, VehicleState

__all__ = ["Batch", "Message", "Parts", "Publisher"]


class Parts(IntFlag):
    STATE = 1
    LOCATION = 2
    ALERTS = 4
    DISCOVERY = 8
    DESTINATION = 16
    ALL = 31


_LOCATION_KEYS = frozenset({"location", "heading_deg", "speed_mph"})
_DISCOVERY_KEYS = frozenset(
    {"vehicle_name", "car_type", "trim", "software_version"}
    # The number controls' ranges follow the car's bounds and its values now.
    | set(CONTROL_INPUTS)
    | {CONTROLS[key].state_key for key in CONTROLS if CONTROLS[key].platform == "number"}
)


@dataclass
class Batch:
    messages: list[Message] = field(default_factory=list)
    parts: dict[str, Parts] = field(default_factory=dict)
    """What each vehicle in the batch had to publish (to mark again if it fails)."""
    events: list[Message] = field(default_factory=list)
    """Notification events in the batch (to send again if it fails)."""
    hub: bool = False
    """The batch carries the hub device's discovery."""

    def __len__(self) -> int:
        return len(self.messages)


class Publisher:
    def __init__(
        self,
        store: StateStore,
        topics: Topics,
        names: Mapping[str, str],
        *,
        now: Callable[[], float],
        touch_interval: float = 60.0,
        announce_all: bool = False,
        configuration_url: str | None = None,
        support_url: str | None = None,
        notifications: bool = False,
        model_of: Callable[[str], str | None] | None = None,
        controls: Collection[str] = (),
    ) -> None:
        self.store = store
        self.topics = topics
        self.names = dict(names)
        self.touch_interval = touch_interval
        self.announce_all = announce_all
        self.configuration_url = configuration_url
        self.support_url = support_url
        self.notifications = notifications
        """Announce the hub device with its Notifications event entity."""
        self.controls = tuple(controls)
        """The car controls to announce for each car (a command path is configured)."""
        self.model_of = model_of or (lambda _vin: None)
        """The model when the car's data does not name it (TeslaMate's cars table)."""
        self._hub_announced = False
        self._events: list[Message] = []
        self._seen: dict[str, frozenset[str]] = {}
        """VIN -> the fields its last discovery document was made from."""
        self._now = now
        self._dirty: dict[str, Parts] = {}
        self._touched: set[str] = set()
        self._published_at: dict[str, float] = {}
        self._discovered: dict[str, tuple[object, ...]] = {}
        """VIN -> what its last discovery document was made of."""

    @property
    def pending(self) -> bool:
        return (
            bool(self._dirty)
            or bool(self._touched)
            or bool(self._events)
            or (self.notifications and not self._hub_announced)
        )

    def notification(self, event: Event) -> None:
        """The notifier reported ``event``: fire the hub's Notifications event entity."""
        payload = encode(notification_payload(event))
        self._events.append(Message(self.topics.notifications, payload, retain=False))
        del self._events[:-MAX_PENDING]

    @property
    def vehicles_published(self) -> int:
        return len(self._published_at)

    def mark(self, applied: Applied) -> None:
        """Note what a record changed."""
        vin = applied.vin
        if applied.changed:
            parts = self._dirty.get(vin, Parts.STATE) | Parts.STATE
            for key in applied.changed:
                if key in _LOCATION_KEYS:
                    parts |= Parts.LOCATION
                elif key == "active_alerts":
                    parts |= Parts.ALERTS
                elif key == "destination_location":
                    parts |= Parts.DESTINATION
                elif key in _DISCOVERY_KEYS or is_extra(key):
                    parts |= Parts.DISCOVERY
            seen = self._seen.get(vin)
            if not self.announce_all and seen is not None and not seen.issuperset(applied.changed):
                parts |= Parts.DISCOVERY  # a field delivered for the first time: announce it
            if vin not in self._discovered:
                parts |= Parts.ALL
            self._dirty[vin] = parts
        elif applied.touched:
            self._touched.add(vin)

    def mark_vehicles(self, vins: Iterable[str], parts: Parts = Parts.ALL) -> None:
        for vin in vins:
            if vin in self.store:
                self._dirty[vin] = self._dirty.get(vin, parts) | parts

    def republish_all(self) -> None:
        """Everything this instance published, again (Home Assistant came online)."""
        self._discovered.clear()
        self._hub_announced = False
        self.mark_vehicles(list(self._published_at), Parts.ALL)

    def take(self, limit: int = 500) -> Batch:
        """The messages for up to ``limit`` vehicles marked since the last batch.

        The limit bounds the memory a burst of new vehicles (each with its discovery
        document) can take; the rest stays marked for the next batch.
        """
        batch = Batch()
        now = self._now()
        if self._touched:
            for vin in self._touched:
                if vin not in self._dirty and now - self._published_at.get(vin, 0.0) >= (
                    self.touch_interval
                ):
                    self._dirty[vin] = Parts.STATE
            self._touched.clear()
        if len(self._dirty) <= limit:
            dirty, self._dirty = self._dirty, {}
        else:
            dirty = {}
            for vin in list(self._dirty)[:limit]:
                dirty[vin] = self._dirty.pop(vin)
        discovery: list[Message] = []
        for vin, parts in dirty.items():
            state = self.store.get(vin)
            if state is None:
                continue
            if parts & Parts.DISCOVERY:
                message = self._discovery(vin, state)
                if message is not None:
                    discovery.append(message)
            batch.parts[vin] = parts
            topics = self.topics
            # Attributes before the state document: a reader that sees the new state
            # has the matching location, alerts and destination too.
            if parts & Parts.LOCATION:
                location = location_document(state)
                if location is not None:
                    batch.messages.append(Message(topics.location(vin), encode(location)))
            if parts & Parts.ALERTS:
                batch.messages.append(Message(topics.alerts(vin), encode(alerts_document(state))))
            if parts & Parts.DESTINATION and "destination_location" in state.fields:
                document = destination_document(state)
                batch.messages.append(Message(topics.destination(vin), encode(document)))
            batch.messages.append(Message(topics.state(vin), encode(state_document(state))))
            self._published_at[vin] = now
        if self.notifications and not self._hub_announced:
            discovery.insert(
                0,
                Message(
                    self.topics.hub_discovery,
                    encode(hub_discovery_document(self.topics, support_url=self.support_url)),
                ),
            )
            self._hub_announced = True
            batch.hub = True
        # Configurations first, so an entity exists before its first state arrives.
        batch.messages[:0] = discovery
        batch.events, self._events = self._events, []
        batch.messages.extend(batch.events)
        return batch

    def _discovery(self, vin: str, state: VehicleState) -> Message | None:
        made_of = (
            vehicle_name(vin, state, self.names),
            state.value("car_type"),
            state.value("trim"),
            state.value("software_version"),
            self.model_of(vin),
            tuple(sorted(key for key in state.fields if is_extra(key))),
            tuple(e.key for e in entities_of(state, announce_all=self.announce_all)),
            tuple(
                (key, slider_range(CONTROLS[key], state))
                for key in self.controls
                if CONTROLS[key].platform == "number"
            ),
        )
        self._seen[vin] = frozenset(state.fields)
        if self._discovered.get(vin) == made_of:
            return None
        self._discovered[vin] = made_of
        document = discovery_document(
            vin,
            state,
            self.topics,
            self.names,
            announce_all=self.announce_all,
            configuration_url=self.configuration_url,
            support_url=self.support_url,
            model=self.model_of(vin),
            controls=self.controls,
        )
        return Message(self.topics.discovery(vin), encode(document))

    def failed(self, batch: Batch) -> None:
        """The batch was not delivered: publish it again with the next one."""
        self._events[:0] = batch.events
        if batch.hub:
            self._hub_announced = False
        for vin, parts in batch.parts.items():
            self._dirty[vin] = self._dirty.get(vin, parts) | parts
            if parts & Parts.DISCOVERY:
                self._discovered.pop(vin, None)

    def forget(self) -> None:
        """Drop all bookkeeping (partitions were revoked; the state is rebuilt)."""
        self._dirty.clear()
        self._touched.clear()
        self._published_at.clear()
        self._discovered.clear()
        self._seen.clear()
