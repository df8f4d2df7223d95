"""The vehicle fields gridmate knows and the Home Assistant entities built from them.

Fields are gridmate's own, source-independent names with the unit in the name where
there is one (``odometer_mi``, ``inside_temp_c``). Each source maps its signals into
these fields; entities are defined once, here, from fields (most entities show one
field; a few, such as "Charging" or "Driving", are derived from several).

Values of fields are already in the form Home Assistant shows: enums are lower-case
option names, booleans are booleans, numbers are in the field's unit.

Signals a source knows but this catalogue does not (new firmware) become *extra
fields* named ``<source prefix>_<signal>``; each gets a generic, disabled-by-default
diagnostic sensor so it can be enabled without a gridmate upgrade.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from gridmate.vehicles.arbitration import DATA_SOURCE_OPTIONS
from gridmate.vehicles.state import InvalidPolicy, VehicleState


class Kind(StrEnum):
    NUMBER = "number"
    STRING = "string"
    BOOL = "bool"
    ENUM = "enum"
    LOCATION = "location"  # (latitude, longitude)
    DOORS = "doors"  # {door name: open}
    ALERTS = "alerts"  # [{"name", "started_at", "audiences"}], sorted by name


@dataclass(frozen=True)
class FieldSpec:
    key: str
    kind: Kind
    invalid: InvalidPolicy = InvalidPolicy.KEEP
    options: tuple[str, ...] = ()
    """For enums: the values the field can take."""


SHIFT_STATES = ("p", "r", "n", "d")
CHARGING_STATES = ("disconnected", "no_power", "starting", "charging", "complete", "stopped")
SENTRY_MODES = ("off", "idle", "armed", "aware", "panic", "quiet")
DOOR_NAMES = (
    "driver_front",
    "driver_rear",
    "passenger_front",
    "passenger_rear",
    "trunk_front",
    "trunk_rear",
)

WINDOW_NAMES = ("driver_front", "driver_rear", "passenger_front", "passenger_rear")
TYRES = ("front_left", "front_right", "rear_left", "rear_right")

_K = InvalidPolicy.KEEP
_C = InvalidPolicy.CLEAR

FIELDS: dict[str, FieldSpec] = {
    spec.key: spec
    for spec in (
        FieldSpec("vehicle_name", Kind.STRING),
        FieldSpec("car_type", Kind.STRING),
        FieldSpec("trim", Kind.STRING),
        FieldSpec("software_version", Kind.STRING),
        FieldSpec("online", Kind.BOOL),
        FieldSpec("location", Kind.LOCATION),
        FieldSpec("heading_deg", Kind.NUMBER),
        FieldSpec("speed_mph", Kind.NUMBER),
        FieldSpec("shift_state", Kind.ENUM, options=SHIFT_STATES),
        FieldSpec("odometer_mi", Kind.NUMBER),
        FieldSpec("battery_level", Kind.NUMBER),
        FieldSpec("usable_battery_level", Kind.NUMBER),
        FieldSpec("est_range_mi", Kind.NUMBER),
        FieldSpec("rated_range_mi", Kind.NUMBER),
        FieldSpec("ideal_range_mi", Kind.NUMBER),
        FieldSpec("energy_remaining_kwh", Kind.NUMBER),
        FieldSpec("charge_state", Kind.ENUM, options=CHARGING_STATES),
        FieldSpec("charge_state_legacy", Kind.STRING),
        FieldSpec("charge_limit_soc", Kind.NUMBER),
        FieldSpec("charge_limit_soc_min", Kind.NUMBER),
        FieldSpec("charge_limit_soc_max", Kind.NUMBER),
        FieldSpec("ac_charging_power_kw", Kind.NUMBER, _C),
        FieldSpec("dc_charging_power_kw", Kind.NUMBER, _C),
        FieldSpec("ac_charging_energy_in_kwh", Kind.NUMBER),
        FieldSpec("dc_charging_energy_in_kwh", Kind.NUMBER),
        FieldSpec("charger_voltage_v", Kind.NUMBER, _C),
        FieldSpec("charger_current_a", Kind.NUMBER, _C),
        FieldSpec("charge_current_request_a", Kind.NUMBER),
        FieldSpec("charge_current_request_max_a", Kind.NUMBER),
        FieldSpec("charger_phases", Kind.NUMBER, _C),
        FieldSpec("time_to_full_charge_h", Kind.NUMBER, _C),
        FieldSpec("fast_charger_present", Kind.BOOL, _C),
        FieldSpec("fast_charger_type", Kind.STRING, _C),
        FieldSpec("charging_cable_type", Kind.STRING, _C),
        FieldSpec("charge_port_door_open", Kind.BOOL),
        FieldSpec("cable_plugged_in", Kind.BOOL),
        FieldSpec("geofence", Kind.STRING),
        FieldSpec("elevation_m", Kind.NUMBER),
        FieldSpec("charge_energy_added_kwh", Kind.NUMBER),
        FieldSpec("scheduled_charging_start", Kind.STRING),
        FieldSpec("climate_on", Kind.BOOL),
        FieldSpec("preconditioning", Kind.BOOL),
        FieldSpec("user_present", Kind.BOOL),
        FieldSpec("update_available", Kind.BOOL),
        FieldSpec("update_version", Kind.STRING),
        FieldSpec("update_download_percent", Kind.NUMBER),
        FieldSpec("update_install_percent", Kind.NUMBER),
        FieldSpec("windows_open", Kind.BOOL),
        FieldSpec("sunroof_installed", Kind.BOOL),
        FieldSpec("sunroof_percent_open", Kind.NUMBER),
        FieldSpec("sunroof_state", Kind.STRING),
        *(FieldSpec(f"window_{name}_open", Kind.BOOL) for name in WINDOW_NAMES),
        *(FieldSpec(f"tpms_soft_warning_{tyre}", Kind.BOOL) for tyre in TYRES),
        FieldSpec("inside_temp_c", Kind.NUMBER),
        FieldSpec("outside_temp_c", Kind.NUMBER),
        FieldSpec("locked", Kind.BOOL),
        FieldSpec("sentry_mode", Kind.ENUM, options=SENTRY_MODES),
        FieldSpec("doors", Kind.DOORS),
        FieldSpec("tpms_front_left_bar", Kind.NUMBER),
        FieldSpec("tpms_front_right_bar", Kind.NUMBER),
        FieldSpec("tpms_rear_left_bar", Kind.NUMBER),
        FieldSpec("tpms_rear_right_bar", Kind.NUMBER),
        FieldSpec("destination_name", Kind.STRING, _C),
        FieldSpec("minutes_to_arrival", Kind.NUMBER, _C),
        FieldSpec("miles_to_arrival", Kind.NUMBER, _C),
        FieldSpec("energy_at_arrival", Kind.NUMBER, _C),
        FieldSpec("traffic_delay_minutes", Kind.NUMBER, _C),
        FieldSpec("destination_location", Kind.LOCATION, _C),
        FieldSpec("active_alerts", Kind.ALERTS),
        FieldSpec("last_error", Kind.STRING),
        FieldSpec("command_error", Kind.STRING),
        FieldSpec("data_source", Kind.ENUM, options=DATA_SOURCE_OPTIONS),
    )
}

EXTRA_FIELD = FieldSpec("(extra)", Kind.STRING)
_EXTRA_KEY = re.compile(r"^[a-z][a-z0-9]*_[a-z0-9_]+$")
MAX_STATE_LENGTH = 255
"""Home Assistant rejects states longer than this."""


def field_spec(key: str) -> FieldSpec:
    return FIELDS.get(key, EXTRA_FIELD)


def is_extra(key: str) -> bool:
    return key not in FIELDS


def invalid_policies(overrides: dict[str, InvalidPolicy] | None = None) -> dict[str, InvalidPolicy]:
    """Each field's invalid-value policy: the catalogue's default, then ``overrides``."""
    policies = {key: spec.invalid for key, spec in FIELDS.items()}
    policies.update(overrides or {})
    return policies


# ---------------------------------------------------------------- entities

Platform = str  # "sensor", "binary_sensor" or "device_tracker"


@dataclass(frozen=True)
class EntitySpec:
    """One Home Assistant entity of every vehicle.

    ``key`` names the value in the vehicle's state document (a field key, or a derived
    key computed by ``derive`` from the vehicle's state).
    """

    key: str
    platform: Platform
    name: str
    device_class: str | None = None
    state_class: str | None = None
    unit: str | None = None
    diagnostic: bool = False
    enabled: bool = True
    icon: str | None = None
    options: tuple[str, ...] = ()
    precision: int | None = None
    inverted: bool = False
    """binary_sensor only: on when the value is false (a lock is "on" when unlocked)."""
    derive: Callable[[VehicleState], Any] | None = None
    attributes: str | None = None
    """Name of the extra topic whose JSON becomes the entity's attributes ("alerts",
    "destination")."""


def _charging_state(state: VehicleState) -> str | None:
    detailed = state.value("charge_state")
    if detailed is not None:
        return str(detailed)
    legacy = state.value("charge_state_legacy")
    if isinstance(legacy, str):
        legacy = re.sub(r"(?<!^)(?=[A-Z])", "_", legacy).lower()
        if legacy in CHARGING_STATES:
            return legacy
    return None


def _charger_power(state: VehicleState) -> float | None:
    powers = [p for p in (state.value("ac_charging_power_kw"), state.value("dc_charging_power_kw"))]
    known = [p for p in powers if isinstance(p, int | float)]
    return round(sum(known), 3) if known else None


def _driving(state: VehicleState) -> bool | None:
    shift = state.value("shift_state")
    speed = state.value("speed_mph")
    if shift is None and speed is None:
        return None
    return shift in ("d", "r") or (isinstance(speed, int | float) and speed > 0)


def _charging(state: VehicleState) -> bool | None:
    charging_state = _charging_state(state)
    if charging_state is None:
        return None
    return charging_state in ("starting", "charging")


def _plugged_in(state: VehicleState) -> bool | None:
    reported = state.value("cable_plugged_in")
    if isinstance(reported, bool):
        return reported  # the source says so itself (TeslaMate's plugged_in)
    charging_state = _charging_state(state)
    if charging_state is not None:
        return charging_state != "disconnected"
    if state.value("charging_cable_type") is not None:
        return True
    return None


def _door(name: str) -> Callable[[VehicleState], bool | None]:
    def derive(state: VehicleState) -> bool | None:
        doors = state.value("doors")
        if not isinstance(doors, dict) or name not in doors:
            return None
        return bool(doors[name])

    return derive


def _last_update(state: VehicleState) -> str | None:
    if state.last_update is None:
        return None
    return datetime.fromtimestamp(state.last_update, UTC).isoformat(timespec="seconds")


def _alert_count(state: VehicleState) -> int:
    # A car that never had an alert has none: 0, not unknown.
    alerts = state.value("active_alerts")
    return 0 if alerts is None else len(alerts)


_S = "sensor"
_B = "binary_sensor"
_M = "measurement"

ENTITIES: tuple[EntitySpec, ...] = (
    EntitySpec("location", "device_tracker", "Location", icon="mdi:car", attributes="location"),
    EntitySpec(
        "shift_state", _S, "Shift state", "enum", options=SHIFT_STATES, icon="mdi:car-shift-pattern"
    ),
    EntitySpec("speed_mph", _S, "Speed", "speed", _M, "mph", precision=0),
    EntitySpec(
        "heading_deg",
        _S,
        "Heading",
        None,
        "measurement_angle",
        "°",
        enabled=False,
        diagnostic=True,
        icon="mdi:compass",
    ),
    EntitySpec("battery_level", _S, "Battery level", "battery", _M, "%", precision=0),
    EntitySpec(
        "usable_battery_level",
        _S,
        "Usable battery level",
        "battery",
        _M,
        "%",
        enabled=False,
        precision=0,
    ),
    EntitySpec("est_range_mi", _S, "Estimated range", "distance", _M, "mi", precision=0),
    EntitySpec("rated_range_mi", _S, "Rated range", "distance", _M, "mi", precision=0),
    EntitySpec(
        "ideal_range_mi", _S, "Ideal range", "distance", _M, "mi", enabled=False, precision=0
    ),
    EntitySpec("odometer_mi", _S, "Odometer", "distance", "total_increasing", "mi", precision=0),
    EntitySpec(
        "energy_remaining_kwh",
        _S,
        "Energy remaining",
        "energy_storage",
        _M,
        "kWh",
        enabled=False,
        precision=1,
    ),
    EntitySpec(
        "charging_state",
        _S,
        "Charging state",
        "enum",
        options=CHARGING_STATES,
        icon="mdi:ev-station",
        derive=_charging_state,
    ),
    EntitySpec(
        "charger_power_kw",
        _S,
        "Charger power",
        "power",
        _M,
        "kW",
        precision=1,
        derive=_charger_power,
    ),
    EntitySpec(
        "ac_charging_power_kw",
        _S,
        "AC charging power",
        "power",
        _M,
        "kW",
        enabled=False,
        precision=1,
    ),
    EntitySpec(
        "dc_charging_power_kw",
        _S,
        "DC charging power",
        "power",
        _M,
        "kW",
        enabled=False,
        precision=1,
    ),
    EntitySpec("charger_voltage_v", _S, "Charger voltage", "voltage", _M, "V", precision=0),
    EntitySpec("charger_current_a", _S, "Charger current", "current", _M, "A", precision=0),
    EntitySpec(
        "charge_current_request_a",
        _S,
        "Charge current request",
        "current",
        _M,
        "A",
        enabled=False,
        diagnostic=True,
    ),
    EntitySpec(
        "charge_current_request_max_a",
        _S,
        "Maximum charge current",
        "current",
        _M,
        "A",
        enabled=False,
        diagnostic=True,
    ),
    EntitySpec(
        "charger_phases",
        _S,
        "Charger phases",
        None,
        None,
        None,
        enabled=False,
        diagnostic=True,
        icon="mdi:sine-wave",
    ),
    EntitySpec(
        "charge_limit_soc",
        _S,
        "Charge limit",
        None,
        _M,
        "%",
        icon="mdi:battery-charging-80",
        precision=0,
    ),
    EntitySpec(
        "time_to_full_charge_h", _S, "Time to full charge", "duration", _M, "h", precision=2
    ),
    EntitySpec(
        "ac_charging_energy_in_kwh",
        _S,
        "AC charge energy added",
        "energy",
        "total_increasing",
        "kWh",
        enabled=False,
        precision=2,
    ),
    EntitySpec(
        "dc_charging_energy_in_kwh",
        _S,
        "DC charge energy added",
        "energy",
        "total_increasing",
        "kWh",
        enabled=False,
        precision=2,
    ),
    EntitySpec(
        "fast_charger_type",
        _S,
        "Fast charger type",
        diagnostic=True,
        enabled=False,
        icon="mdi:ev-plug-ccs2",
    ),
    EntitySpec(
        "charging_cable_type",
        _S,
        "Charging cable",
        diagnostic=True,
        enabled=False,
        icon="mdi:ev-plug-type2",
    ),
    EntitySpec("inside_temp_c", _S, "Inside temperature", "temperature", _M, "°C", precision=1),
    EntitySpec("outside_temp_c", _S, "Outside temperature", "temperature", _M, "°C", precision=1),
    EntitySpec("sentry_mode", _S, "Sentry mode", "enum", options=SENTRY_MODES, icon="mdi:cctv"),
    EntitySpec(
        "tpms_front_left_bar", _S, "Tyre pressure front left", "pressure", _M, "bar", precision=2
    ),
    EntitySpec(
        "tpms_front_right_bar", _S, "Tyre pressure front right", "pressure", _M, "bar", precision=2
    ),
    EntitySpec(
        "tpms_rear_left_bar", _S, "Tyre pressure rear left", "pressure", _M, "bar", precision=2
    ),
    EntitySpec(
        "tpms_rear_right_bar", _S, "Tyre pressure rear right", "pressure", _M, "bar", precision=2
    ),
    EntitySpec("geofence", _S, "Geofence", icon="mdi:map-marker-radius"),
    EntitySpec(
        "elevation_m",
        _S,
        "Elevation",
        "distance",
        _M,
        "m",
        diagnostic=True,
        enabled=False,
        precision=0,
    ),
    EntitySpec(
        "charge_energy_added_kwh",
        _S,
        "Charge energy added",
        "energy",
        "total_increasing",
        "kWh",
        precision=2,
    ),
    EntitySpec(
        "scheduled_charging_start",
        _S,
        "Scheduled charging start",
        "timestamp",
        icon="mdi:calendar-clock",
    ),
    EntitySpec("climate_on", _B, "Climate", icon="mdi:fan"),
    EntitySpec("preconditioning", _B, "Preconditioning", icon="mdi:car-defrost-front"),
    EntitySpec("user_present", _B, "User present", "occupancy"),
    EntitySpec("update_available", _B, "Software update available", "update", diagnostic=True),
    EntitySpec("update_version", _S, "Software update version", diagnostic=True, icon="mdi:update"),
    EntitySpec(
        "update_download_percent",
        _S,
        "Software update download",
        unit="%",
        diagnostic=True,
        icon="mdi:download",
        precision=0,
    ),
    EntitySpec(
        "update_install_percent",
        _S,
        "Software update installation",
        unit="%",
        diagnostic=True,
        icon="mdi:update",
        precision=0,
    ),
    EntitySpec("windows_open", _B, "Windows", "window"),
    *(
        EntitySpec(f"window_{name}_open", _B, f"{label} window", "window")
        for name, label in zip(
            WINDOW_NAMES,
            ("Front driver", "Rear driver", "Front passenger", "Rear passenger"),
            strict=True,
        )
    ),
    EntitySpec(
        "sunroof_percent_open",
        _S,
        "Sunroof",
        None,
        _M,
        "%",
        icon="mdi:car-convertible",
        precision=0,
    ),
    EntitySpec("sunroof_state", _S, "Sunroof state", icon="mdi:car-convertible"),
    EntitySpec(
        "sunroof_installed",
        _B,
        "Sunroof installed",
        diagnostic=True,
        enabled=False,
        icon="mdi:car-convertible",
    ),
    *(
        EntitySpec(
            f"tpms_soft_warning_{tyre}",
            _B,
            f"Tyre pressure warning {tyre.replace('_', ' ')}",
            "problem",
            diagnostic=True,
        )
        for tyre in TYRES
    ),
    EntitySpec(
        "destination_name",
        _S,
        "Destination",
        enabled=False,
        icon="mdi:map-marker",
        attributes="destination",
    ),
    EntitySpec(
        "minutes_to_arrival",
        _S,
        "Time to arrival",
        "duration",
        _M,
        "min",
        enabled=False,
        precision=0,
    ),
    EntitySpec(
        "miles_to_arrival",
        _S,
        "Distance to arrival",
        "distance",
        _M,
        "mi",
        enabled=False,
        precision=1,
    ),
    EntitySpec(
        "energy_at_arrival",
        _S,
        "Battery at arrival",
        "battery",
        _M,
        "%",
        enabled=False,
        precision=0,
    ),
    EntitySpec(
        "traffic_delay_minutes",
        _S,
        "Traffic delay",
        "duration",
        _M,
        "min",
        enabled=False,
        precision=0,
    ),
    EntitySpec("software_version", _S, "Software version", diagnostic=True, icon="mdi:update"),
    EntitySpec("car_type", _S, "Model", diagnostic=True, enabled=False, icon="mdi:car-info"),
    EntitySpec(
        "vehicle_name", _S, "Vehicle name", diagnostic=True, enabled=False, icon="mdi:rename"
    ),
    EntitySpec("last_update", _S, "Last update", "timestamp", diagnostic=True, derive=_last_update),
    EntitySpec(
        "data_source",
        _S,
        "Data source",
        "enum",
        options=DATA_SOURCE_OPTIONS,
        diagnostic=True,
        icon="mdi:source-branch",
    ),
    EntitySpec(
        "active_alert_count",
        _S,
        "Active alerts",
        diagnostic=True,
        icon="mdi:alert",
        derive=_alert_count,
        attributes="alerts",
    ),
    EntitySpec(
        "last_error", _S, "Last error", diagnostic=True, enabled=False, icon="mdi:alert-circle"
    ),
    EntitySpec("command_error", _S, "Last command error", diagnostic=True, icon="mdi:alert-circle"),
    EntitySpec("locked", _B, "Lock", "lock", inverted=True),
    EntitySpec("charge_port_door_open", _B, "Charge port door", "door", icon="mdi:ev-plug-type2"),
    EntitySpec("fast_charger_present", _B, "Fast charger", "plug", enabled=False),
    EntitySpec("driving", _B, "Driving", "moving", derive=_driving),
    EntitySpec("charging", _B, "Charging", "battery_charging", derive=_charging),
    EntitySpec("plugged_in", _B, "Charge cable", "plug", derive=_plugged_in),
    EntitySpec("online", _B, "Online", "connectivity", diagnostic=True),
    EntitySpec("door_driver_front", _B, "Front driver door", "door", derive=_door("driver_front")),
    EntitySpec("door_driver_rear", _B, "Rear driver door", "door", derive=_door("driver_rear")),
    EntitySpec(
        "door_passenger_front", _B, "Front passenger door", "door", derive=_door("passenger_front")
    ),
    EntitySpec(
        "door_passenger_rear", _B, "Rear passenger door", "door", derive=_door("passenger_rear")
    ),
    EntitySpec("door_trunk_front", _B, "Frunk", "door", derive=_door("trunk_front")),
    EntitySpec("door_trunk_rear", _B, "Trunk", "door", derive=_door("trunk_rear")),
)

DERIVED: tuple[EntitySpec, ...] = tuple(e for e in ENTITIES if e.derive is not None)

_CHARGE_STATE = ("charge_state", "charge_state_legacy")
ENTITY_INPUTS: dict[str, tuple[str, ...]] = {
    "charging_state": _CHARGE_STATE,
    "charging": _CHARGE_STATE,
    "charger_power_kw": ("ac_charging_power_kw", "dc_charging_power_kw"),
    "driving": ("shift_state", "speed_mph"),
    "plugged_in": (*_CHARGE_STATE, "charging_cable_type", "cable_plugged_in"),
    **{e.key: ("doors",) for e in ENTITIES if e.key.startswith("door_")},
}
"""The fields a derived entity is made from (an entity is its own field otherwise)."""


def extra_entity(key: str) -> EntitySpec:
    """A generic, disabled diagnostic sensor for a field this catalogue does not know."""
    words = key.split("_", 1)[1].replace("_", " ")
    return EntitySpec(key, "sensor", words[:1].upper() + words[1:], diagnostic=True, enabled=False)


def valid_extra_key(key: str) -> bool:
    return bool(_EXTRA_KEY.match(key)) and key not in FIELDS


def _check_catalogue() -> None:
    # Keys share one JSON document per vehicle: entity keys either are fields or are
    # derived, and derived keys must not shadow fields.
    keys = [e.key for e in ENTITIES]
    assert len(keys) == len(set(keys)), "duplicate entity key"
    for entity in ENTITIES:
        if entity.derive is None:
            assert entity.key in FIELDS, f"entity {entity.key} has no field"
        else:
            assert entity.key not in FIELDS, f"derived {entity.key} shadows a field"
    for key in ENTITY_INPUTS:
        assert any(e.key == key and e.derive is not None for e in ENTITIES), key
    for entity in DERIVED:
        assert entity.key in ENTITY_INPUTS or entity.key in (
            "last_update",
            "active_alert_count",
        ), f"derived {entity.key} names no inputs"


_check_catalogue()
