"""Simulated cars and the Kafka records fleet-telemetry would write for them.

Used by the demo, the tests and the benchmark. Records are built from the upstream
schema exactly as the server writes them: protobuf (the default) or protojson (with
``transmit_decoded_records``), keyed by VIN, with the server's headers. A car sends
typed values (``prefer_typed``) or, like older firmware, strings.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from google.protobuf import json_format

from gridmate.vehicles.telemetry.proto import (
    vehicle_alert_pb2,
    vehicle_connectivity_pb2,
    vehicle_data_pb2,
)

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class KafkaRecord:
    """What the server produces: topic, key (the VIN's bytes), value and headers."""

    topic: str
    key: bytes
    value: bytes
    headers: Headers


def _headers(vin: str, txtype: str, received_at: datetime) -> Headers:
    return [
        ("vin", vin.encode()),
        ("receivedat", str(int(received_at.timestamp() * 1000)).encode()),
        ("timestamp", b"0"),
        ("txid", uuid.uuid4().hex.encode()),
        ("txtype", txtype.encode()),
        ("version", b"0"),
        ("device_client_version", b"1.2.0"),
    ]


def _encode(message: Any, as_json: bool) -> bytes:
    if as_json:
        text = json_format.MessageToJson(
            message, always_print_fields_with_no_presence=True, indent=None
        )
        return text.encode()
    return bytes(message.SerializeToString())


# An upstream signal's value in a simulated record: a Python value and the Value arm
# a car with prefer_typed uses for it.
_TYPED_ARMS = {
    "Gear": ("shift_state_value", "ShiftState"),
    "DetailedChargeState": ("detailed_charge_state_value", "DetailedChargeState"),
    "SentryMode": ("sentry_mode_state_value", "SentryModeState"),
    "ChargeLimitSoc": ("int_value", None),
    "Locked": ("boolean_value", None),
    "ChargePortDoorOpen": ("boolean_value", None),
    "FastChargerPresent": ("boolean_value", None),
    "Version": ("string_value", None),
    "VehicleName": ("string_value", None),
    "CarType": ("car_type_value", "CarType"),
    "FdWindow": ("window_state_value", "WindowState"),
    "FpWindow": ("window_state_value", "WindowState"),
    "RdWindow": ("window_state_value", "WindowState"),
    "RpWindow": ("window_state_value", "WindowState"),
    "HvacPower": ("hvac_power_value", "HvacPowerState"),
    "SunroofInstalled": ("sunroof_installed_state_value", "SunroofInstalledState"),
    "SoftwareUpdateVersion": ("string_value", None),
    "SoftwareUpdateDownloadPercentComplete": ("int_value", None),
    "SoftwareUpdateInstallationPercentComplete": ("int_value", None),
    "ExpectedEnergyPercentAtTripArrival": ("int_value", None),
    "DestinationName": ("string_value", None),
}


class Invalid:
    """Marks a datum the car flags as invalid."""


INVALID_DATUM = Invalid()


def _set_value(holder: Any, signal: str, value: Any, typed: bool) -> None:
    if value is INVALID_DATUM:
        holder.invalid = True
        return
    if signal == "Location" or (typed and signal in ("DestinationLocation", "OriginLocation")):
        # The server rewrites the Location signal's strings into a LocationValue.
        holder.location_value.latitude, holder.location_value.longitude = value
        return
    if signal in ("DestinationLocation", "OriginLocation"):
        latitude, longitude = value
        holder.string_value = (
            f"({abs(latitude)} {'N' if latitude >= 0 else 'S'}, "
            f"{abs(longitude)} {'E' if longitude >= 0 else 'W'})"
        )
        return
    if signal == "DoorState":
        holder.door_value.SetInParent()  # all closed is still a value
        for name, is_open in value.items():
            setattr(holder.door_value, name, is_open)
        return
    if signal in ("TpmsSoftWarnings", "TpmsHardWarnings"):
        holder.tire_location_value.SetInParent()  # no tyre warned is still a value
        for name, warned in value.items():
            setattr(holder.tire_location_value, name, warned)
        return
    if not typed:
        # Before prefer_typed, cars send strings; enum names without their prefix.
        holder.string_value = str(value).lower() if isinstance(value, bool) else str(value)
        return
    arm, enum_prefix = _TYPED_ARMS.get(signal, ("double_value", None))
    if enum_prefix is not None:
        descriptor = vehicle_data_pb2.Value.DESCRIPTOR.fields_by_name[arm].enum_type
        setattr(holder, arm, descriptor.values_by_name[f"{enum_prefix}{value}"].number)
    else:
        setattr(holder, arm, value)


def telemetry_record(
    namespace: str,
    vin: str,
    created_at: datetime,
    signals: Mapping[str, Any],
    *,
    is_resend: bool = False,
    typed: bool = True,
    as_json: bool = False,
    received_at: datetime | None = None,
) -> KafkaRecord:
    """A V record with ``signals`` (upstream Field name -> value).

    ``created_at`` is the car's clock; the server received it at ``received_at``
    (by default the same instant).
    """
    payload = vehicle_data_pb2.Payload(vin=vin, is_resend=is_resend)
    payload.created_at.FromDatetime(created_at)
    for signal, value in signals.items():
        datum = payload.data.add()
        datum.key = vehicle_data_pb2.Field.Value(signal)
        _set_value(datum.value, signal, value, typed)
    return KafkaRecord(
        f"{namespace}_V",
        vin.encode(),
        _encode(payload, as_json),
        _headers(vin, "V", received_at or created_at),
    )


def connectivity_record(
    namespace: str,
    vin: str,
    created_at: datetime,
    connection_id: str,
    connected: bool,
    *,
    as_json: bool = False,
    message_vin: str | None = None,
) -> KafkaRecord:
    """The server opened or closed the connection of the car whose certificate is ``vin``.

    fleet-telemetry before 0.9.1 does not stamp the certificate's VIN into connectivity
    messages: ``message_vin`` is what such a message says instead.
    """
    message = vehicle_connectivity_pb2.VehicleConnectivity(
        vin=vin if message_vin is None else message_vin,
        connection_id=connection_id,
        status=vehicle_connectivity_pb2.ConnectivityEvent.Value(
            "CONNECTED" if connected else "DISCONNECTED"
        ),
        network_interface="wifi",
    )
    message.created_at.FromDatetime(created_at)
    return KafkaRecord(
        f"{namespace}_connectivity",
        vin.encode(),
        _encode(message, as_json),
        _headers(vin, "connectivity", created_at),
    )


def alerts_record(
    namespace: str,
    vin: str,
    created_at: datetime,
    alerts: list[tuple[str, datetime, datetime | None]],
    *,
    as_json: bool = False,
) -> KafkaRecord:
    """Alerts as (name, started_at, ended_at or None while active)."""
    message = vehicle_alert_pb2.VehicleAlerts(vin=vin)
    message.created_at.FromDatetime(created_at)
    for name, started, ended in alerts:
        alert = message.alerts.add(name=name)
        alert.audiences.append(vehicle_alert_pb2.Audience.Value("Customer"))
        alert.started_at.FromDatetime(started)
        if ended is not None:
            alert.ended_at.FromDatetime(ended)
    return KafkaRecord(
        f"{namespace}_alerts",
        vin.encode(),
        _encode(message, as_json),
        _headers(vin, "alerts", created_at),
    )


# ---------------------------------------------------------------- a simulated car


@dataclass
class SimulatedCar:
    """A car that drives and charges; :meth:`signals` is what it would stream now."""

    vin: str
    name: str = "Simulated Tesla"
    latitude: float = 37.4124
    longitude: float = -122.1459
    heading: float = 90.0
    speed_mph: float = 0.0
    gear: str = "P"
    odometer_mi: float = 12_345.6
    battery_level: float = 62.0
    charge_limit: int = 80
    charge_state: str = "Disconnected"
    charger_power_kw: float = 0.0
    charger_voltage: float = 0.0
    charger_amps: float = 0.0
    inside_temp_c: float = 21.5
    outside_temp_c: float = 17.0
    locked: bool = True
    sentry: str = "Off"
    charge_port_open: bool = False
    tyres_bar: tuple[float, float, float, float] = (2.9, 2.9, 2.875, 2.9)
    version: str = "2025.44.25.5 3d2f0e1b9a7c"
    capacity_kwh: float = 75.0
    changed: set[str] = field(default_factory=set)

    def _set(self, name: str, value: Any) -> None:
        if getattr(self, name) != value:
            setattr(self, name, value)
            self.changed.add(name)

    def drive(self, seconds: float, speed_mph: float, turn_deg: float = 0.0) -> None:
        """Drive at ``speed_mph`` for ``seconds``, turning by ``turn_deg``."""
        self._set("gear", "D")
        self._set("locked", True)
        self._set("speed_mph", round(speed_mph, 1))
        self._set("heading", round((self.heading + turn_deg) % 360, 1))
        miles = speed_mph * seconds / 3600
        self._set("odometer_mi", round(self.odometer_mi + miles, 2))
        # About 0.25 kWh per mile.
        self._set("battery_level", round(self.battery_level - miles * 25 / self.capacity_kwh, 2))
        radians = math.radians(self.heading)
        self._set("latitude", round(self.latitude + miles / 69.0 * math.cos(radians), 6))
        self._set("longitude", round(self.longitude + miles / 55.0 * math.sin(radians), 6))
        self._set("inside_temp_c", round(self.inside_temp_c + (21.0 - self.inside_temp_c) * 0.2, 1))

    def park(self) -> None:
        self._set("speed_mph", 0.0)
        self._set("gear", "P")

    def plug_in(self, kw: float = 11.0, volts: float = 240.0) -> None:
        self._set("charge_port_open", True)
        self._set("charge_state", "Charging")
        self._set("charger_power_kw", kw)
        self._set("charger_voltage", volts)
        self._set("charger_amps", round(kw * 1000 / volts))

    def charge(self, seconds: float) -> None:
        if self.charge_state != "Charging":
            return
        added = self.charger_power_kw * seconds / 3600 / self.capacity_kwh * 100
        level = min(float(self.charge_limit), round(self.battery_level + added, 2))
        self._set("battery_level", level)
        if level >= self.charge_limit:
            self._set("charge_state", "Complete")
            self._set("charger_power_kw", 0.0)
            self._set("charger_amps", 0.0)

    def unplug(self) -> None:
        self._set("charge_state", "Disconnected")
        self._set("charger_power_kw", 0.0)
        self._set("charger_voltage", 0.0)
        self._set("charger_amps", 0.0)
        self._set("charge_port_open", False)

    def hours_to_full(self) -> float | None:
        if self.charge_state != "Charging" or self.charger_power_kw <= 0:
            return None
        missing = (self.charge_limit - self.battery_level) / 100 * self.capacity_kwh
        return round(missing / self.charger_power_kw, 2)

    def signals(self, everything: bool = False) -> dict[str, Any]:
        """Upstream signals for what changed since the last call (or all of them)."""
        changed, self.changed = self.changed, set()
        everything = everything or not changed
        out: dict[str, Any] = {}

        def want(*names: str) -> bool:
            return everything or any(name in changed for name in names)

        if everything:
            out["VehicleName"] = self.name
            out["CarType"] = "Model3"
            out["Version"] = self.version
            out["ChargeLimitSoc"] = self.charge_limit
            out["OutsideTemp"] = self.outside_temp_c
            out["SentryMode"] = self.sentry
            out["TpmsPressureFl"], out["TpmsPressureFr"] = self.tyres_bar[:2]
            out["TpmsPressureRl"], out["TpmsPressureRr"] = self.tyres_bar[2:]
        if want("latitude", "longitude"):
            out["Location"] = (self.latitude, self.longitude)
        if want("heading"):
            out["GpsHeading"] = self.heading
        if want("speed_mph"):
            out["VehicleSpeed"] = self.speed_mph
        if want("gear"):
            out["Gear"] = self.gear
        if want("odometer_mi"):
            out["Odometer"] = self.odometer_mi
        if want("battery_level"):
            out["BatteryLevel"] = self.battery_level
            out["Soc"] = round(self.battery_level - 1.5, 2)
            out["EstBatteryRange"] = round(self.battery_level * 2.7, 1)
            out["RatedRange"] = round(self.battery_level * 3.1, 1)
            out["EnergyRemaining"] = round(self.battery_level / 100 * self.capacity_kwh, 2)
        if want("charge_state"):
            out["DetailedChargeState"] = self.charge_state
        if want("battery_level", "charge_state", "charger_power_kw"):
            to_full = self.hours_to_full()
            out["TimeToFullCharge"] = INVALID_DATUM if to_full is None else to_full
        if want("charger_power_kw"):
            out["ACChargingPower"] = self.charger_power_kw
        if want("charger_voltage"):
            out["ChargerVoltage"] = self.charger_voltage
        if want("charger_amps"):
            out["ChargeAmps"] = self.charger_amps
        if want("inside_temp_c"):
            out["InsideTemp"] = self.inside_temp_c
        if want("locked"):
            out["Locked"] = self.locked
        if want("charge_port_open"):
            out["ChargePortDoorOpen"] = self.charge_port_open
        return out


def sample_vin(number: int) -> str:
    """A syntactically valid, made-up VIN (17 characters)."""
    return f"5YJ3F7EB{number:09d}"
