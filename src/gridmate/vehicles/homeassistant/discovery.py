"""Home Assistant's MQTT conventions for the vehicles: topics, discovery, state documents.

Pure functions from the vehicle state to MQTT messages; nothing here does I/O.

Per vehicle (``<base>`` is the base topic, ``gridmate`` by default):

* ``<base>/<VIN>/state`` (retained): one JSON document with every field's value
  (``null`` when unknown), the derived values, and under ``"_m"`` when and from which
  source each field was observed. Every entity reads its value from it with a template
  as simple as ``{{ value_json.battery_level }}``. The ``_m`` part lets gridmate (this
  instance after a restart, or another instance taking over the vehicle) restore its
  state from the broker.
* ``<base>/<VIN>/location`` (retained): ``{"latitude", "longitude", "heading"}``, the
  device tracker's attributes. No speed: Home Assistant does not convert attributes,
  so a speed here would be in mph for metric users too; the "Speed" entity has it,
  converted. No ``gps_accuracy``: no source reports one (Fleet Telemetry's Location,
  TeslaMate's location and the Fleet API's drive state are bare coordinates), and
  Home Assistant takes a missing one as 0 m, as it would a made-up one.
* ``<base>/<VIN>/alerts`` (retained): ``{"alerts": [...]}``, attributes of "Active alerts".
* ``<base>/<VIN>/destination`` (retained): ``{"latitude", "longitude"}`` of the active
  route's destination (``{}`` without one), attributes of "Destination" (a map card
  shows it); published once a source has reported on the car's route.
* ``<discovery prefix>/device/<node>_<VIN>/config`` (retained): device-based discovery,
  one message per vehicle with all its entities.

``<base>/status`` is gridmate's availability (``online``, last will ``offline``); every
entity depends on it. Vehicles that sleep keep their last values: a vehicle's own
connectivity is the "Online" entity, not its entities' availability.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from gridmate.homeassistant.discovery import (
    OFFLINE,
    ONLINE,
    device_config_topic,
    device_document,
    encode,
)
from gridmate.homeassistant.discovery import homeassistant_status as _homeassistant_status
from gridmate.homeassistant.notifications import event_component
from gridmate.vehicles.catalogue import (
    DERIVED,
    ENTITIES,
    ENTITY_INPUTS,
    FIELDS,
    EntitySpec,
    Kind,
    extra_entity,
    field_spec,
    is_extra,
)
from gridmate.vehicles.homeassistant.controls import (
    CONTROLS,
    CarControl,
    command_topic,
    slider_range,
)
from gridmate.vehicles.state import FieldValue, VehicleState

__all__ = ["OFFLINE", "ONLINE", "Topics", "encode"]


@dataclass(frozen=True)
class Topics:
    base: str = "gridmate"
    discovery_prefix: str = "homeassistant"
    node: str = "gridmate"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def homeassistant_status(self) -> str:
        return _homeassistant_status(self.discovery_prefix)

    def state(self, vin: str) -> str:
        return f"{self.base}/{vin}/state"

    def location(self, vin: str) -> str:
        return f"{self.base}/{vin}/location"

    def alerts(self, vin: str) -> str:
        return f"{self.base}/{vin}/alerts"

    def destination(self, vin: str) -> str:
        return f"{self.base}/{vin}/destination"

    @property
    def all_states(self) -> str:
        return f"{self.base}/+/state"

    @property
    def notifications(self) -> str:
        """The hub's "Notifications" event entity (not retained)."""
        return f"{self.base}/vehicles/notifications"

    @property
    def hub_discovery(self) -> str:
        return device_config_topic(self.discovery_prefix, f"{self.node}_vehicles")

    def discovery(self, vin: str) -> str:
        return device_config_topic(self.discovery_prefix, f"{self.node}_{vin}")

    def vin_of_state(self, topic: str) -> str | None:
        prefix = f"{self.base}/"
        if not topic.startswith(prefix) or not topic.endswith("/state"):
            return None
        vin = topic[len(prefix) : -len("/state")]
        return vin if vin and "/" not in vin else None


# ---------------------------------------------------------------- state documents

_NULLS: dict[str, None] = {key: None for key in FIELDS} | {e.key: None for e in DERIVED}


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def state_document(state: VehicleState) -> dict[str, Any]:
    """The JSON document published on the vehicle's state topic."""
    document: dict[str, Any] = dict(_NULLS)
    meta: dict[str, dict[str, float]] = {}
    for key, current in state.fields.items():
        value = current.value
        document[key] = list(value) if value.__class__ is tuple else value
        by_source = meta.get(current.source)
        if by_source is None:
            by_source = meta[current.source] = {}
        by_source[key] = current.observed_at
    for entity in DERIVED:
        document[entity.key] = entity.derive(state)  # type: ignore[misc]
    document["_m"] = meta
    return document


def location_document(state: VehicleState) -> dict[str, Any] | None:
    location = state.value("location")
    if location is None:
        return None
    return {
        "latitude": location[0],
        "longitude": location[1],
        "heading": state.value("heading_deg"),
    }


def alerts_document(state: VehicleState) -> dict[str, Any]:
    return {"alerts": _json_value(state.value("active_alerts") or ())}


def destination_document(state: VehicleState) -> dict[str, Any]:
    destination = state.value("destination_location")
    if destination is None:
        return {}
    return {"latitude": destination[0], "longitude": destination[1]}


class SnapshotError(ValueError):
    """A retained state document that cannot be restored from."""


def _restore_value(key: str, value: Any) -> Any:
    kind = field_spec(key).kind
    if value is None:
        return None
    if kind is Kind.LOCATION:
        if not (isinstance(value, list) and len(value) == 2):
            raise SnapshotError(f"{key}: not a [latitude, longitude] pair")
        return (float(value[0]), float(value[1]))
    if kind is Kind.ALERTS:
        if not isinstance(value, list):
            raise SnapshotError(f"{key}: not a list")
        return tuple(value)
    return value


def restore_fields(payload: bytes) -> dict[str, FieldValue]:
    """The fields of a vehicle from its retained state document."""
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SnapshotError(f"not JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("_m"), dict):
        raise SnapshotError("not a gridmate state document")
    fields: dict[str, FieldValue] = {}
    for source, observed in document["_m"].items():
        if not isinstance(observed, dict):
            raise SnapshotError(f"_m.{source}: not an object")
        for key, at in observed.items():
            if not isinstance(at, int | float) or key not in document:
                raise SnapshotError(f"_m.{source}.{key}: bad entry")
            fields[key] = FieldValue(_restore_value(key, document[key]), float(at), str(source))
    return fields


# ---------------------------------------------------------------- discovery


def vehicle_name(vin: str, state: VehicleState | None, names: Mapping[str, str]) -> str:
    """The configured name, else the name the vehicle reports, else the VIN."""
    if vin in names:
        return names[vin]
    reported = state.value("vehicle_name") if state is not None else None
    return reported if isinstance(reported, str) and reported.strip() else vin


def _model(state: VehicleState, fallback: str | None = None) -> str:
    car_type, trim = state.value("car_type"), state.value("trim")
    parts = [p for p in (car_type, trim) if isinstance(p, str) and p]
    return " ".join(parts) if parts else (fallback or "Tesla")


def _component(entity: EntitySpec, topics: Topics, vin: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "p": entity.platform,
        "name": entity.name,
        "uniq_id": f"{topics.node}_{vin}_{entity.key}",
    }
    if entity.platform == "device_tracker":
        config["json_attr_t"] = topics.location(vin)
        config["src_type"] = "gps"
    else:
        config["stat_t"] = topics.state(vin)
        config["val_tpl"] = f"{{{{ value_json.{entity.key} }}}}"
    if entity.platform == "binary_sensor":
        on, off = ("False", "True") if entity.inverted else ("True", "False")
        config["pl_on"], config["pl_off"] = on, off
    if entity.attributes == "alerts":
        config["json_attr_t"] = topics.alerts(vin)
    elif entity.attributes == "destination":
        config["json_attr_t"] = topics.destination(vin)
    for key, value in (
        ("dev_cla", entity.device_class),
        ("stat_cla", entity.state_class),
        ("unit_of_meas", entity.unit),
        ("ic", entity.icon),
        ("sug_dsp_prc", entity.precision),
    ):
        if value is not None:
            config[key] = value
    if entity.options:
        config["ops"] = list(entity.options)
    if entity.diagnostic:
        config["ent_cat"] = "diagnostic"
    if not entity.enabled:
        config["en"] = False
    return config


_ALWAYS = frozenset({"last_update", "data_source", "active_alert_count"})
"""Entities every car has from its first data: when, from where, and its alerts (0)."""


def delivered(entity: EntitySpec, state: VehicleState) -> bool:
    """Whether some source delivered what ``entity`` shows for this car.

    A field once delivered stays in the car's state (and in the retained state
    document, so across restarts), also when its value is later cleared.
    """
    if entity.key in _ALWAYS:
        return True
    return any(key in state.fields for key in ENTITY_INPUTS.get(entity.key, (entity.key,)))


def entities_of(state: VehicleState, *, announce_all: bool = True) -> list[EntitySpec]:
    """The catalogue's entities (those delivered, unless ``announce_all``), plus one
    generic sensor per extra field seen."""
    extras = sorted(key for key in state.fields if is_extra(key))
    known = [e for e in ENTITIES if announce_all or delivered(e, state)]
    return [*known, *(extra_entity(key) for key in extras)]


def discovery_document(
    vin: str,
    state: VehicleState,
    topics: Topics,
    names: Mapping[str, str],
    *,
    announce_all: bool = True,
    configuration_url: str | None = None,
    support_url: str | None = None,
    model: str | None = None,
    controls: Collection[str] = (),
) -> dict[str, Any]:
    """Device-based discovery for one vehicle (Home Assistant 2024.11 or later).

    ``model`` names the model when the car's own data does not (TeslaMate's cars table);
    ``controls`` are the car controls to announce (a command path is configured);
    ``support_url`` goes into the origin.
    """
    device: dict[str, Any] = {
        "ids": [f"{topics.node}_{vin}"],
        "name": vehicle_name(vin, state, names),
        "mf": "Tesla",
        "mdl": _model(state, model),
        "sn": vin,
    }
    software = state.value("software_version")
    if isinstance(software, str):
        device["sw"] = software
    if configuration_url:
        device["cu"] = configuration_url
    components = {
        f"{vin}_{entity.key}": _component(entity, topics, vin)
        for entity in entities_of(state, announce_all=announce_all)
    }
    for key in controls:
        component = control_component(CONTROLS[key], state, topics, vin)
        if component is not None:
            components[f"{vin}_{key}_control"] = component
    return device_document(device, components, availability=topics.status, support_url=support_url)


def control_component(
    control: CarControl, state: VehicleState, topics: Topics, vin: str
) -> dict[str, Any] | None:
    """A car control's entity, or None while the car lacks what it needs (the
    maximum charging current)."""
    config: dict[str, Any] = {
        "p": control.platform,
        "name": control.name,
        "uniq_id": f"{topics.node}_{vin}_{control.key}_control",
        "stat_t": topics.state(vin),
        "val_tpl": f"{{{{ value_json.{control.state_key} }}}}",
        "cmd_t": command_topic(topics.base, vin, control.key),
        "ic": control.icon,
    }
    if control.platform == "switch":
        config["stat_on"], config["stat_off"] = "True", "False"
        return config
    bounds = slider_range(control, state)
    if bounds is None:
        return None
    config.update({"min": bounds[0], "max": bounds[1], "step": 1, "mode": "slider"})
    if control.device_class is not None:
        config["dev_cla"] = control.device_class
    if control.unit is not None:
        config["unit_of_meas"] = control.unit
    return config


def hub_discovery_document(topics: Topics, *, support_url: str | None = None) -> dict[str, Any]:
    """The vehicles hub itself as a device: its notifications as an event entity."""
    device = {
        "ids": [f"{topics.node}_vehicles"],
        "name": "gridmate vehicles",
        "mf": "gridmate",
        "mdl": "Vehicles hub",
    }
    component = event_component(f"{topics.node}_vehicles_notifications", topics.notifications)
    return device_document(
        device,
        {"vehicles_notifications": component},
        availability=topics.status,
        support_url=support_url,
    )
