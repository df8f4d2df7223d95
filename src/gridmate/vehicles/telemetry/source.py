"""Fleet Telemetry as a source: decoded records into the canonical vehicle state.

Everything specific to Tesla's fleet-telemetry server lives here: which upstream
signal feeds which canonical field and how its value is converted, how connectivity
records and data records together say whether a car is online, and how alert and
error records become fields. The decoding of Kafka records themselves is in
:mod:`gridmate.vehicles.telemetry`.

Units are the car's: miles, mph, °C, kW, kWh, bar, hours.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from gridmate.vehicles.catalogue import MAX_STATE_LENGTH, TYRES, WINDOW_NAMES, valid_extra_key
from gridmate.vehicles.state import INVALID, Applied, Outcome, StateStore, VehicleState
from gridmate.vehicles.telemetry.records import (
    AlertsRecord,
    ConnectivityRecord,
    ConnectivityStatus,
    Doors,
    ErrorsRecord,
    Location,
    Record,
    TelemetryRecord,
    TimeOfDay,
    TireLocation,
)

SOURCE = "fleet_telemetry"
EXTRA_PREFIX = "ft_"

Converter = Callable[[Any], Any]
"""Turns a decoded datum value into the field's value, or returns INVALID."""

_NOT_AVAILABLE = frozenset({"Unknown", "Invalid", "SNA", ""})


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        return INVALID
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return INVALID
    return INVALID


def _boolean(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, int | float):
        return bool(value)
    return INVALID


def _text(value: Any) -> Any:
    if value is None:
        return INVALID
    text = str(value)
    return text[:MAX_STATE_LENGTH] if text else INVALID


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _enum(prefix: str, options: tuple[str, ...]) -> Converter:
    """An enum value to its option name; the prefix is stripped if the decoder left it."""

    def convert(value: Any) -> Any:
        if not isinstance(value, str):
            return INVALID
        name = value.removeprefix(prefix)
        if name in _NOT_AVAILABLE:
            return INVALID
        option = _snake(name)
        return option if option in options else INVALID

    return convert


def _label(value: Any) -> Any:
    """An enum shown as text (cable types, charger types): not-available values are invalid."""
    if not isinstance(value, str) or value in _NOT_AVAILABLE:
        return INVALID
    return value


def _location(value: Any) -> Any:
    if isinstance(value, Location):
        return (value.latitude, value.longitude)
    return INVALID


def _doors(value: Any) -> Any:
    if isinstance(value, Doors):
        return dataclasses.asdict(value)
    return INVALID


_CAR_TYPES = {
    "ModelS": "Model S",
    "ModelX": "Model X",
    "Model3": "Model 3",
    "ModelY": "Model Y",
    "SemiTruck": "Semi",
    "Cybertruck": "Cybertruck",
}


def _car_type(value: Any) -> Any:
    if not isinstance(value, str) or value in _NOT_AVAILABLE:
        return INVALID
    name = value.removeprefix("CarType")
    return _CAR_TYPES.get(name, name)


def _version(value: Any) -> Any:
    # The car reports "2024.44.25.1 abcdef123456"; the build hash is noise in a UI.
    text = _text(value)
    return text.split(" ", 1)[0] if isinstance(text, str) else text


_WINDOW_OPEN = {"Closed": False, "PartiallyOpen": True, "Opened": True}


def _window(value: Any) -> Any:
    """A WindowState: open when partly or fully open, as TeslaMate's ``*_window_open``."""
    if not isinstance(value, str):
        return INVALID
    return _WINDOW_OPEN.get(value.removeprefix("WindowState"), INVALID)


def _tyre_warnings(value: Any) -> tuple[Any, ...]:
    """TpmsSoftWarnings: the tyres with a soft warning, one flag per tyre."""
    if isinstance(value, TireLocation):
        return tuple(getattr(value, tyre) for tyre in TYRES)
    if value is False or (isinstance(value, str) and value.strip().lower() == "false"):
        return (False,) * len(TYRES)  # a bare "no warning" names no tyre, so none has one
    return (INVALID,) * len(TYRES)


_SUNROOF_INSTALLED = {"NotInstalled": False, "Gen1Installed": True, "Gen2Installed": True}


def _sunroof_installed(value: Any) -> Any:
    if not isinstance(value, str):
        return INVALID
    return _SUNROOF_INSTALLED.get(value.removeprefix("SunroofInstalledState"), INVALID)


# HvacPower says what the climate system runs for. Cabin overheat protection is not
# counted as "climate on": it is a function of its own that runs with the climate off.
_HVAC_POWER = {
    "Off": (False, False),
    "On": (True, False),
    "Precondition": (True, True),
    "OverheatProtect": (False, False),
}


def _hvac_power(value: Any) -> tuple[Any, ...]:
    """HvacPower to (climate on, preconditioning)."""
    if not isinstance(value, str):
        return (INVALID, INVALID)
    return _HVAC_POWER.get(value.removeprefix("HvacPowerState"), (INVALID, INVALID))


def _update_version(value: Any) -> tuple[Any, ...]:
    """SoftwareUpdateVersion to (update version, update available).

    The car sends the version of the update it has (downloading, scheduled or ready to
    install), and a blank string when there is none.
    """
    if not isinstance(value, str):
        return (INVALID, INVALID)
    version = value.strip().split(" ", 1)[0]
    if not version:
        return (None, False)
    return (version[:MAX_STATE_LENGTH], True)


# Upstream Field name -> (canonical field, converter).
MAPPING: dict[str, tuple[str, Converter]] = {
    "VehicleName": ("vehicle_name", _text),
    "CarType": ("car_type", _car_type),
    "Trim": ("trim", _text),
    "Version": ("software_version", _version),
    "Location": ("location", _location),
    "GpsHeading": ("heading_deg", _number),
    "VehicleSpeed": ("speed_mph", _number),
    "Gear": ("shift_state", _enum("ShiftState", ("p", "r", "n", "d"))),
    "Odometer": ("odometer_mi", _number),
    "BatteryLevel": ("battery_level", _number),
    "Soc": ("usable_battery_level", _number),
    "EstBatteryRange": ("est_range_mi", _number),
    "RatedRange": ("rated_range_mi", _number),
    "IdealBatteryRange": ("ideal_range_mi", _number),
    "EnergyRemaining": ("energy_remaining_kwh", _number),
    "DetailedChargeState": (
        "charge_state",
        _enum(
            "DetailedChargeState",
            ("disconnected", "no_power", "starting", "charging", "complete", "stopped"),
        ),
    ),
    "ChargeState": ("charge_state_legacy", _label),
    "ChargeLimitSoc": ("charge_limit_soc", _number),
    "ACChargingPower": ("ac_charging_power_kw", _number),
    "DCChargingPower": ("dc_charging_power_kw", _number),
    "ACChargingEnergyIn": ("ac_charging_energy_in_kwh", _number),
    "DCChargingEnergyIn": ("dc_charging_energy_in_kwh", _number),
    "ChargerVoltage": ("charger_voltage_v", _number),
    "ChargeAmps": ("charger_current_a", _number),
    "ChargeCurrentRequest": ("charge_current_request_a", _number),
    "ChargeCurrentRequestMax": ("charge_current_request_max_a", _number),
    "ChargerPhases": ("charger_phases", _number),
    "TimeToFullCharge": ("time_to_full_charge_h", _number),
    "FastChargerPresent": ("fast_charger_present", _boolean),
    "FastChargerType": ("fast_charger_type", _label),
    "ChargingCableType": ("charging_cable_type", _label),
    "ChargePortDoorOpen": ("charge_port_door_open", _boolean),
    "InsideTemp": ("inside_temp_c", _number),
    "OutsideTemp": ("outside_temp_c", _number),
    "Locked": ("locked", _boolean),
    "SentryMode": (
        "sentry_mode",
        _enum("SentryModeState", ("off", "idle", "armed", "aware", "panic", "quiet")),
    ),
    "DoorState": ("doors", _doors),
    "TpmsPressureFl": ("tpms_front_left_bar", _number),
    "TpmsPressureFr": ("tpms_front_right_bar", _number),
    "TpmsPressureRl": ("tpms_rear_left_bar", _number),
    "TpmsPressureRr": ("tpms_rear_right_bar", _number),
    "DestinationName": ("destination_name", _text),
    "MinutesToArrival": ("minutes_to_arrival", _number),
    "MilesToArrival": ("miles_to_arrival", _number),
    "ExpectedEnergyPercentAtTripArrival": ("energy_at_arrival", _number),
    "RouteTrafficMinutesDelay": ("traffic_delay_minutes", _number),
    "DestinationLocation": ("destination_location", _location),
    "FdWindow": ("window_driver_front_open", _window),
    "RdWindow": ("window_driver_rear_open", _window),
    "FpWindow": ("window_passenger_front_open", _window),
    "RpWindow": ("window_passenger_rear_open", _window),
    "SoftwareUpdateDownloadPercentComplete": ("update_download_percent", _number),
    "SoftwareUpdateInstallationPercentComplete": ("update_install_percent", _number),
    "SunroofInstalled": ("sunroof_installed", _sunroof_installed),
}

SplitConverter = Callable[[Any], tuple[Any, ...]]
"""Turns one datum value into the values of several fields (INVALID where unknown)."""

# Upstream Field name -> (canonical fields, converter): signals that fill several fields.
SPLIT: dict[str, tuple[tuple[str, ...], SplitConverter]] = {
    "TpmsSoftWarnings": (tuple(f"tpms_soft_warning_{tyre}" for tyre in TYRES), _tyre_warnings),
    "HvacPower": (("climate_on", "preconditioning"), _hvac_power),
    "SoftwareUpdateVersion": (("update_version", "update_available"), _update_version),
}

_WINDOW_FIELDS = tuple(f"window_{name}_open" for name in WINDOW_NAMES)
_WINDOW_SIGNALS = frozenset(
    signal for signal, (key, _convert) in MAPPING.items() if key in _WINDOW_FIELDS
)

IGNORED_SIGNALS = frozenset(
    {"Unknown", "Deprecated_1", "Deprecated_2", "Deprecated_3"}
    | {f"Experimental_{n}" for n in range(1, 16)}
)

_extra_keys: dict[str, str | None] = {}


def _extra_name(signal: str) -> str:
    return EXTRA_PREFIX + _snake(signal)


MAPPED_EXTRA_KEYS = frozenset(_extra_name(signal) for signal in (*MAPPING, *SPLIT))
"""Extra fields of signals that now feed catalogue fields: a state document written
before the mapping still names them, and restoring them would keep a dead entity."""


def extra_key(signal: str) -> str | None:
    """The extra field a signal unknown to the catalogue is kept under, or None."""
    key = _extra_keys.get(signal, "")
    if key == "":
        key = _extra_name(signal)
        key = key if valid_extra_key(key) and signal not in IGNORED_SIGNALS else None
        _extra_keys[signal] = key
    return key


def _extra_value(value: Any) -> Any:
    """Extra fields hold what Home Assistant can show as a state: a scalar or short text."""
    if value is None:
        return INVALID
    if isinstance(value, bool | int | float | str):
        return value[:MAX_STATE_LENGTH] if isinstance(value, str) else value
    if isinstance(value, Location):
        value = [value.latitude, value.longitude]
    elif isinstance(value, Doors | TireLocation):
        value = dataclasses.asdict(value)
    elif isinstance(value, TimeOfDay):
        return str(value)
    return json.dumps(value, separators=(",", ":"), default=str)[:MAX_STATE_LENGTH]


def _any_window_open(state: VehicleState) -> bool | None:
    """Open if any window is, closed if all four are known closed, else unknown."""
    known = [state.value(key) for key in _WINDOW_FIELDS]
    if any(value is True for value in known):
        return True
    if all(value is False for value in known):
        return False
    return None


def bound_to_receipt(record: Record, received_at: datetime, max_skew: timedelta) -> Record:
    """The record, or a copy timed ``received_at`` if it claims to be from further ahead.

    A car whose clock jumped (to 2999, say) would otherwise date its values after
    everything real that follows, and they would never be replaced. The server's
    receive time is the best time such a record has.
    """
    if record.created_at - received_at <= max_skew:
        return record
    return dataclasses.replace(record, created_at=received_at)


def _seconds(when: datetime) -> float:
    # Millisecond precision: what the state document carries, so a restored state
    # compares equal to the one it was published from.
    return round(when.timestamp(), 3)


@dataclass(slots=True)
class _Presence:
    connections: dict[str, float] = field(default_factory=dict)
    """Open connection id -> when it was last known alive (epoch s)."""
    last_data: float | None = None


class FleetTelemetrySource:
    """Applies decoded Fleet Telemetry records to a :class:`StateStore`.

    A vehicle is online while it has an open connection, or for ``online_timeout``
    seconds after its last data record (connectivity events are not reliable on
    their own: a CONNECTED may never see its DISCONNECTED). An open connection with
    no data for ``stale_connection_after`` seconds is forgotten.
    """

    def __init__(
        self,
        store: StateStore,
        *,
        online_timeout: float = 600.0,
        stale_connection_after: float = 6 * 3600.0,
    ) -> None:
        self.store = store
        self.online_timeout = online_timeout
        self.stale_connection_after = stale_connection_after
        self._presence: dict[str, _Presence] = {}

    def apply(self, record: Record) -> Applied:
        if isinstance(record, TelemetryRecord):
            return self._telemetry(record)
        if isinstance(record, ConnectivityRecord):
            return self._connectivity(record)
        if isinstance(record, AlertsRecord):
            return self._alerts(record)
        if isinstance(record, ErrorsRecord):
            return self._errors(record)
        raise TypeError(f"not a Fleet Telemetry record: {type(record).__name__}")

    def _telemetry(self, record: TelemetryRecord) -> Applied:
        vin = record.vin
        at = _seconds(record.created_at)
        resend = record.is_resend
        update = self.store.update
        applied = Applied(vin, [])
        windows = False

        def put(key: str, value: Any) -> None:
            outcome = update(vin, key, value, at, SOURCE, resend=resend)
            if outcome is Outcome.CHANGED:
                applied.changed.append(key)
            elif outcome is Outcome.TOUCHED:
                applied.touched = True
            elif value is not INVALID:
                applied.stale += 1

        for datum in record.datums:
            mapped = MAPPING.get(datum.field)
            if mapped is not None:
                key, convert = mapped
                put(key, INVALID if datum.value is None else convert(datum.value))
                windows = windows or datum.field in _WINDOW_SIGNALS
                continue
            split = SPLIT.get(datum.field)
            if split is not None:
                keys, convert_split = split
                values = (
                    (INVALID,) * len(keys) if datum.value is None else convert_split(datum.value)
                )
                for key, value in zip(keys, values, strict=True):
                    put(key, value)
                continue
            extra = extra_key(datum.field)
            if extra is not None:
                put(extra, INVALID if datum.invalid else _extra_value(datum.value))
        if windows:
            # TeslaMate sends "any window open" itself; the car sends each window.
            any_open = _any_window_open(self.store.vehicle(vin))
            if any_open is not None:
                put("windows_open", any_open)
        self._proof_of_life(vin, at, applied)
        return applied

    def _proof_of_life(self, vin: str, at: float, applied: Applied) -> None:
        presence = self._presence.get(vin)
        if presence is None:
            presence = self._presence[vin] = _Presence()
        if presence.last_data is None or at > presence.last_data:
            presence.last_data = at
        for connection in presence.connections:
            presence.connections[connection] = max(presence.connections[connection], at)
        self._set_online(vin, True, at, applied)

    def _set_online(self, vin: str, online: bool, at: float, applied: Applied) -> None:
        outcome = self.store.update(vin, "online", online, at, SOURCE)
        if outcome is Outcome.CHANGED:
            applied.changed.append("online")
        elif outcome is Outcome.TOUCHED:
            applied.touched = True

    def _connectivity(self, record: ConnectivityRecord) -> Applied:
        vin = record.vin
        at = _seconds(record.created_at)
        applied = Applied(vin, [])
        presence = self._presence.get(vin)
        if presence is None:
            presence = self._presence[vin] = _Presence()
        if record.status is ConnectivityStatus.CONNECTED:
            presence.connections[record.connection_id] = at
            self._set_online(vin, True, at, applied)
        elif record.status is ConnectivityStatus.DISCONNECTED:
            # A DISCONNECTED for a connection never seen open says nothing new.
            was_open = presence.connections.pop(record.connection_id, None) is not None
            if was_open and not presence.connections:
                self._set_online(vin, False, at, applied)
        return applied

    def expire(self, now: float) -> list[Applied]:
        """Mark vehicles offline whose connections and data have gone quiet."""
        results = []
        for state in self.store:
            online = state.fields.get("online")
            if online is None or online.value is not True or online.source != SOURCE:
                continue
            vin = state.vin
            presence = self._presence.get(vin)
            if presence is not None:
                for connection, alive in list(presence.connections.items()):
                    if now - alive > self.stale_connection_after:
                        del presence.connections[connection]
                if presence.connections:
                    continue
            # After a restart the presence is gone; the restored "online" time stands in.
            last = online.observed_at
            if presence is not None and presence.last_data is not None:
                last = max(last, presence.last_data)
            if now - last > self.online_timeout:
                applied = Applied(vin, [])
                self._set_online(vin, False, now, applied)
                if applied.changed:
                    results.append(applied)
        return results

    def _alerts(self, record: AlertsRecord) -> Applied:
        vin = record.vin
        at = _seconds(record.created_at)
        applied = Applied(vin, [])
        state = self.store.vehicle(vin)
        current = state.fields.get("active_alerts")
        if current is not None and at < current.observed_at:
            applied.stale = 1
            return applied
        active = {alert["name"]: alert for alert in (current.value if current else ()) or ()}
        for alert in record.alerts:
            if alert.active:
                active[alert.name] = {
                    "name": alert.name,
                    "started_at": (
                        alert.started_at.isoformat(timespec="seconds") if alert.started_at else None
                    ),
                    "audiences": list(alert.audiences),
                }
            else:
                active.pop(alert.name, None)
        value = tuple(active[name] for name in sorted(active))
        if self.store.update(vin, "active_alerts", value, at, SOURCE) is Outcome.CHANGED:
            applied.changed.append("active_alerts")
        return applied

    def _errors(self, record: ErrorsRecord) -> Applied:
        vin = record.vin
        applied = Applied(vin, [])
        if not record.errors:
            return applied
        at = _seconds(record.created_at)
        latest = record.errors[-1]
        text = f"{latest.name}: {latest.body}" if latest.body else latest.name
        outcome = self.store.update(vin, "last_error", text[:MAX_STATE_LENGTH], at, SOURCE)
        if outcome is Outcome.CHANGED:
            applied.changed.append("last_error")
        return applied

    def forget(self, vins: set[str] | None = None) -> None:
        """Drop connection tracking (all of it, or for ``vins``)."""
        if vins is None:
            self._presence.clear()
        else:
            for vin in vins:
                self._presence.pop(vin, None)
