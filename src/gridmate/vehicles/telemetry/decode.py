"""Turn Fleet Telemetry Kafka records into the neutral objects of ``records``.

The fleet-telemetry server publishes one Kafka record per vehicle message on
``<namespace>_V``, ``_alerts``, ``_errors`` and ``_connectivity``, with a ``txtype``
header naming the record type. The value is the protobuf message, or protojson of
the same message when the server runs with ``transmit_decoded_records``; the choice is
server-wide, so both are accepted on every record. A protojson body starts with
``{`` (0x7B); a protobuf body of these messages never does, because 0x7B would be
field 15 with the group wire type, which none of the schemas has.

What the car sends varies with firmware: before ``prefer_typed`` almost every value is
a string, enum names come with or without their prefix, numbers may use another arm
than documented, and newer cars send fields and value types this schema may not know
yet. Decoding therefore normalises each value by a per-field type table
(``FIELD_KINDS``, from Tesla's published field list) and counts what it cannot
interpret instead of failing. Only records that cannot be decoded at all raise
``MalformedRecord``; callers count and skip them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Final

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from .proto import (
    vehicle_alert_pb2,
    vehicle_connectivity_pb2,
    vehicle_data_pb2,
    vehicle_error_pb2,
)
from .records import (
    Alert,
    AlertsRecord,
    ConnectivityRecord,
    ConnectivityStatus,
    Datum,
    DatumValue,
    Doors,
    ErrorsRecord,
    Location,
    Record,
    RecordType,
    TelemetryRecord,
    TimeOfDay,
    TireLocation,
    VehicleError,
)

__all__ = [
    "DEFAULT_MAX_SIZE",
    "FIELD_KINDS",
    "FIELD_NAMES",
    "FieldKind",
    "MalformedRecord",
    "decode_record",
    "enum_options",
    "field_kind",
    "record_type",
]

# The server refuses vehicle messages over 1,000,000 bytes of protobuf; the protojson
# rendering of the same message is several times larger.
DEFAULT_MAX_SIZE: Final = 4 * 1024 * 1024


class MalformedRecord(ValueError):
    """A Kafka record that cannot be decoded at all.

    ``reason`` is a short stable token suitable as a metric label: ``oversize``,
    ``empty``, ``unknown_type``, ``bad_protobuf``, ``bad_json``, ``bad_shape``,
    ``missing_vin`` or ``missing_created_at``; ``detail`` is for logs.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class FieldKind(StrEnum):
    """The Python type a field's value normalises to."""

    FLOAT = "float"
    INT = "int"
    BOOL = "bool"
    STRING = "string"
    ENUM = "enum"  # str: the enum value name without its prefix
    LOCATION = "location"
    # int seconds since the epoch; Tesla documents these as off by the car's UTC offset
    # (they read right as Pacific time), so they are passed on uninterpreted.
    TIMESTAMP = "timestamp"
    DOORS = "doors"
    TIRES = "tires"
    OTHER = "other"  # placeholders and undocumented fields: passed on as sent


# --------------------------------------------------------------------------- schema

_FIELD_ENUM: Final = vehicle_data_pb2.DESCRIPTOR.enum_types_by_name["Field"]
_FIELD_NAMES: Final = {value.number: value.name for value in _FIELD_ENUM.values}
FIELD_NAMES: Final[Mapping[int, str]] = MappingProxyType(_FIELD_NAMES)
_KNOWN_FIELDS: Final = frozenset(FIELD_NAMES.values())


def _enum_prefix(enum: EnumDescriptor) -> str:
    # Every value enum starts with <Prefix>Unknown = 0, and the prefix is not always
    # the enum's name (ChargeUnitPreference uses ChargeUnit, CarTypeValue CarType).
    zero = enum.values_by_number[0].name
    return zero[: -len("Unknown")] if zero.endswith("Unknown") else ""


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix) :] if prefix and name.startswith(prefix) and name != prefix else name


_ENUM_NAMES: Final[dict[str, dict[int, str]]] = {}
_ENUM_LOOKUP: Final[dict[str, dict[str, str]]] = {}
for _enum in vehicle_data_pb2.DESCRIPTOR.enum_types_by_name.values():
    if _enum.name == "Field":
        continue
    _prefix = _enum_prefix(_enum)
    _by_number = {v.number: _strip(v.name, _prefix) for v in _enum.values}
    _lookup: dict[str, str] = {}
    for _value in _enum.values:
        _short = _by_number[_value.number]
        for _variant in (_value.name, _short):
            _lookup[_variant] = _short
            _lookup.setdefault(_variant.casefold(), _short)
    _ENUM_NAMES[_enum.name] = _by_number
    _ENUM_LOOKUP[_enum.name] = _lookup

# Field kinds follow Tesla's published list of Fleet Telemetry fields ("real",
# "integer", "boolean", "string", "Location", "timestamp", "<X> enum"). They only steer
# how strings from older firmware are parsed and how numbers are normalised; a typed
# value always decodes by the member it arrived in.
_FLOAT_FIELDS = """
    ACChargingEnergyIn ACChargingPower BatteryLevel BrakePedalPos BrickVoltageMax
    BrickVoltageMin ChargeAmps ChargeRateMilePerHour ChargerVoltage CruiseSetSpeed
    CurrentLimitMph DCChargingEnergyIn DCChargingPower DiAxleSpeedF DiAxleSpeedR
    DiAxleSpeedREL DiAxleSpeedRER DiHeatsinkTF DiHeatsinkTR DiHeatsinkTREL DiHeatsinkTRER
    DiInverterTF DiInverterTR DiInverterTREL DiInverterTRER DiMotorCurrentF DiMotorCurrentR
    DiMotorCurrentREL DiMotorCurrentRER DiSlaveTorqueCmd DiStatorTempF DiStatorTempR
    DiStatorTempREL DiStatorTempRER DiTorqueActualF DiTorqueActualR DiTorqueActualREL
    DiTorqueActualRER DiTorquemotor DiVBatF DiVBatR DiVBatREL DiVBatRER EnergyRemaining
    EstBatteryRange EstimatedHoursToChargeTermination GpsHeading HvacLeftTemperatureRequest
    HvacRightTemperatureRequest IdealBatteryRange InsideTemp IsolationResistance
    LateralAcceleration LifetimeEnergyGainedRegen LifetimeEnergyUsed LifetimeEnergyUsedDrive
    LongitudinalAcceleration MediaAudioVolume MediaAudioVolumeIncrement MediaAudioVolumeMax
    MilesSinceReset MilesToArrival MinutesToArrival ModuleTempMax ModuleTempMin Odometer
    OutsideTemp PackCurrent PackVoltage PedalPosition PowershareInstantaneousPowerKW
    RatedRange RouteTrafficMinutesDelay SelfDrivingMilesSinceReset SemitruckTpmsPressureRe1L0
    SemitruckTpmsPressureRe1L1 SemitruckTpmsPressureRe1R0 SemitruckTpmsPressureRe1R1
    SemitruckTpmsPressureRe2L0 SemitruckTpmsPressureRe2L1 SemitruckTpmsPressureRe2R0
    SemitruckTpmsPressureRe2R1 Soc TimeToFullCharge TonneauOpenPercent TpmsPressureFl
    TpmsPressureFr TpmsPressureRl TpmsPressureRr VehicleSpeed
"""
_INT_FIELDS = """
    ChargeCurrentRequest ChargeCurrentRequestMax ChargeLimitSoc ChargerPhases
    ClimateSeatCoolingFrontLeft ClimateSeatCoolingFrontRight ExpectedEnergyPercentAtTripArrival
    HomelinkDeviceCount HvacFanSpeed HvacFanStatus HvacSteeringWheelHeatLevel
    MediaNowPlayingDuration MediaNowPlayingElapsed NumBrickVoltageMax NumBrickVoltageMin
    NumModuleTempMax NumModuleTempMin PairedPhoneKeyAndKeyFobQty PowershareHoursLeft
    SeatHeaterLeft SeatHeaterRearCenter SeatHeaterRearLeft SeatHeaterRearRight SeatHeaterRight
    SoftwareUpdateDownloadPercentComplete SoftwareUpdateExpectedDurationMinutes
    SoftwareUpdateInstallationPercentComplete
"""
_BOOL_FIELDS = """
    AutoSeatClimateLeft AutoSeatClimateRight AutomaticBlindSpotCamera
    AutomaticEmergencyBrakingOff BatteryHeaterOn BlindSpotCollisionWarningChime
    BmsFullchargecomplete BrakePedal ChargeEnableRequest ChargePortColdWeatherMode
    ChargePortDoorOpen DCDCEnable DefrostForPreconditioning DriveRail DriverSeatBelt
    DriverSeatOccupied EmergencyLaneDepartureAvoidance EuropeVehicle FastChargerPresent
    GpsState GuestModeEnabled HomelinkNearby HvacACEnabled HvacSteeringWheelHeatAuto
    LightsHazardsActive LightsHighBeams LocatedAtFavorite LocatedAtHome LocatedAtWork Locked
    NotEnoughPowerToHeat OffroadLightbarPresent PinToDriveEnabled PreconditioningEnabled
    RearDefrostEnabled RearDisplayHvacEnabled RemoteStartEnabled RightHandDrive
    ScheduledChargingPending SeatVentEnabled ServiceMode Setting24HourTime SpeedLimitMode
    SuperchargerSessionTripPlanner ValetModeEnabled WiperHeatEnabled
"""
_STRING_FIELDS = """
    DestinationName EfficiencyPackage ExteriorColor MediaNowPlayingAlbum MediaNowPlayingArtist
    MediaNowPlayingStation MediaNowPlayingTitle MediaPlaybackSource RearSeatHeaters RoofColor
    RouteLine SoftwareUpdateVersion Trim VehicleName Version WheelType
"""
_TIMESTAMP_FIELDS = """
    ScheduledChargingStartTime SoftwareUpdateScheduledStartTime TpmsLastSeenPressureTimeFl
    TpmsLastSeenPressureTimeFr TpmsLastSeenPressureTimeRl TpmsLastSeenPressureTimeRr
"""
_LOCATION_FIELDS = "Location DestinationLocation OriginLocation"
_ENUM_FIELDS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "BMSState": "BMSStateValue",
        "CabinOverheatProtectionMode": "CabinOverheatProtectionModeState",
        "CabinOverheatProtectionTemperatureLimit": "ClimateOverheatProtectionTempLimit",
        "CarType": "CarTypeValue",
        "CenterDisplay": "DisplayState",
        "ChargePort": "ChargePortValue",
        "ChargePortLatch": "ChargePortLatchValue",
        # Documented as a string; its values are the ChargingState names, with or
        # without the ChargeState prefix.
        "ChargeState": "ChargingState",
        "ChargingCableType": "CableType",
        "ClimateKeeperMode": "ClimateKeeperModeState",
        "CruiseFollowDistance": "FollowDistance",
        "DefrostMode": "DefrostModeState",
        "DetailedChargeState": "DetailedChargeStateValue",
        "DiStateF": "DriveInverterState",
        "DiStateR": "DriveInverterState",
        "DiStateREL": "DriveInverterState",
        "DiStateRER": "DriveInverterState",
        "FastChargerType": "FastCharger",
        "FdWindow": "WindowState",
        "FpWindow": "WindowState",
        "RdWindow": "WindowState",
        "RpWindow": "WindowState",
        "ForwardCollisionWarning": "ForwardCollisionSensitivity",
        "Gear": "ShiftState",
        "GuestModeMobileAccessState": "GuestModeMobileAccess",
        "HvacAutoMode": "HvacAutoModeState",
        "HvacPower": "HvacPowerState",
        "Hvil": "HvilStatus",
        "LaneDepartureAvoidance": "LaneAssistLevel",
        "LightsTurnSignal": "TurnSignalState",
        "MediaPlaybackStatus": "MediaStatus",
        "PassengerSeatBelt": "BuckleStatus",
        "PowershareStatus": "PowershareState",
        "PowershareStopReason": "PowershareStopReasonStatus",
        "PowershareType": "PowershareTypeStatus",
        "ScheduledChargingMode": "ScheduledChargingModeValue",
        "SemitruckPassengerSeatFoldPosition": "SeatFoldPosition",
        "SemitruckTractorParkBrakeStatus": "TractorAirStatus",
        "SemitruckTrailerParkBrakeStatus": "TrailerAirStatus",
        "SentryMode": "SentryModeState",
        "SettingChargeUnit": "ChargeUnitPreference",
        "SettingDistanceUnit": "DistanceUnit",
        "SettingTemperatureUnit": "TemperatureUnit",
        "SettingTirePressureUnit": "PressureUnit",
        "SpeedLimitWarning": "SpeedAssistLevel",
        "SunroofInstalled": "SunroofInstalledState",
        "TonneauPosition": "TonneauPositionState",
        "TonneauTentMode": "TonneauTentModeState",
    }
)


def _kinds() -> dict[str, FieldKind]:
    kinds: dict[str, FieldKind] = {}
    for names, kind in (
        (_FLOAT_FIELDS, FieldKind.FLOAT),
        (_INT_FIELDS, FieldKind.INT),
        (_BOOL_FIELDS, FieldKind.BOOL),
        (_STRING_FIELDS, FieldKind.STRING),
        (_TIMESTAMP_FIELDS, FieldKind.TIMESTAMP),
        (_LOCATION_FIELDS, FieldKind.LOCATION),
    ):
        kinds.update(dict.fromkeys(names.split(), kind))
    kinds.update(dict.fromkeys(_ENUM_FIELDS, FieldKind.ENUM))
    kinds["DoorState"] = FieldKind.DOORS
    kinds["TpmsHardWarnings"] = FieldKind.TIRES
    kinds["TpmsSoftWarnings"] = FieldKind.TIRES
    return kinds


_FIELD_KINDS: Final = _kinds()
FIELD_KINDS: Final[Mapping[str, FieldKind]] = MappingProxyType(_FIELD_KINDS)


def field_kind(field: str) -> FieldKind:
    """The kind a field's value normalises to; OTHER for fields not in Tesla's list."""
    return FIELD_KINDS.get(field, FieldKind.OTHER)


def enum_options(field: str) -> tuple[str, ...]:
    """The possible values of an enum field, unprefixed, in wire order; () otherwise."""
    enum = _ENUM_FIELDS.get(field)
    if enum is None:
        return ()
    names = _ENUM_NAMES[enum]
    return tuple(names[number] for number in sorted(names))


# --------------------------------------------------------------------------- values


class _BadValue(Exception):
    """A value whose type does not fit; the datum is marked invalid."""


class _Unknown(Exception):
    """A value the schema cannot name (an enum number or member from newer firmware)."""


_F32: Final = struct.Struct("<f")
_INTEGRAL_KINDS: Final = frozenset({FieldKind.INT, FieldKind.TIMESTAMP})
_TRUE: Final = frozenset({"true", "1"})
_FALSE: Final = frozenset({"false", "0"})
_LOCATION_RE: Final = re.compile(
    r"\(\s*([0-9.]+)\s*([NS])\s*,\s*([0-9.]+)\s*([EW])\s*\)", re.IGNORECASE
)


def _float32(value: float) -> float:
    # A float member is 32-bit; widening it gives 21.299999237060547 for 21.3. Use the
    # shortest decimal that maps back to the same float32, as protojson renders it.
    if not math.isfinite(value):
        return value
    for digits in (6, 7, 8):
        candidate = float(f"{value:.{digits}g}")
        if _F32.unpack(_F32.pack(candidate))[0] == value:
            return candidate
    return float(f"{value:.9g}")


def _parse_int(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        number = float(text)
    if not math.isfinite(number):
        raise ValueError(text)
    return int(number) if number.is_integer() else number


def _parse_location(text: str) -> Location:
    # The server rewrites the Location signal's "(37.412374 N, 122.145867 W)" strings
    # into a LocationValue, but not the other location fields.
    match = _LOCATION_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(text)
    lat, lat_hemisphere, lon, lon_hemisphere = match.groups()
    latitude = float(lat) * (-1 if lat_hemisphere in "Ss" else 1)
    longitude = float(lon) * (-1 if lon_hemisphere in "Ww" else 1)
    return Location(latitude, longitude)


def _from_string(field: str, text: str, uncoercible: list[str]) -> Datum:
    kind = _FIELD_KINDS.get(field)
    try:
        if kind is FieldKind.FLOAT:
            number = float(text)
            if not math.isfinite(number):
                return Datum(field, None, True)
            return Datum(field, number)
        if kind is FieldKind.INT or kind is FieldKind.TIMESTAMP:
            return Datum(field, _parse_int(text))
        if kind is FieldKind.BOOL:
            lowered = text.strip().lower()
            if lowered in _TRUE:
                return Datum(field, True)
            if lowered in _FALSE:
                return Datum(field, False)
            raise ValueError(text)
        if kind is FieldKind.ENUM:
            lookup = _ENUM_LOOKUP[_ENUM_FIELDS[field]]
            stripped = text.strip()
            name = lookup.get(stripped) or lookup.get(stripped.casefold())
            # Values the schema does not list are kept: a new enum value is still data.
            return Datum(field, name if name is not None else text)
        if kind is FieldKind.LOCATION:
            return Datum(field, _parse_location(text))
    except ValueError:
        uncoercible.append(field)
        return Datum(field, None, True)
    return Datum(field, text)


def _from_typed(field: str, value: DatumValue) -> Datum:
    if isinstance(value, float):
        if not math.isfinite(value):
            return Datum(field, None, True)
        if value.is_integer() and _FIELD_KINDS.get(field) in _INTEGRAL_KINDS:
            return Datum(field, int(value))
    elif isinstance(value, int) and not isinstance(value, bool):
        kind = _FIELD_KINDS.get(field)
        if kind is FieldKind.FLOAT:
            return Datum(field, float(value))
        if kind is FieldKind.BOOL and value in (0, 1):
            return Datum(field, bool(value))
    return Datum(field, value)


# Converters per Value member, for protobuf (the attribute value) and JSON (the
# decoded JSON value). Both return a DatumValue or raise _BadValue / _Unknown.
_Converter = Callable[[Any], DatumValue]


def _pb_enum(names: dict[int, str]) -> _Converter:
    def convert(number: int) -> str:
        name = names.get(number)
        if name is None:
            raise _Unknown
        return name

    return convert


class _Unlisted(str):
    """An enum name a newer server knows and this schema does not: kept, but counted."""

    __slots__ = ()


def _json_enum(names: dict[int, str], lookup: dict[str, str], prefix: str) -> _Converter:
    def convert(raw: Any) -> str:
        if isinstance(raw, str):
            name = lookup.get(raw)
            if name is None:
                return _Unlisted(_strip(raw, prefix))
            return name
        if isinstance(raw, int) and not isinstance(raw, bool):
            name = names.get(raw)
            if name is None:
                raise _Unknown
            return name
        raise _BadValue

    return convert


def _json_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise _BadValue
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        try:
            return int(raw)
        except ValueError:
            raise _BadValue from None
    raise _BadValue


def _json_float(raw: Any) -> float:
    # protojson writes NaN and the infinities as strings, and may quote numbers.
    if isinstance(raw, bool):
        raise _BadValue
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw)
        except ValueError:
            raise _BadValue from None
    raise _BadValue


def _json_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    raise _BadValue


def _json_str(raw: Any) -> str:
    if isinstance(raw, str):
        return raw
    raise _BadValue


def _json_object(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    raise _BadValue


def _json_location(raw: Any) -> Location:
    obj = _json_object(raw)
    return Location(_json_float(obj.get("latitude", 0.0)), _json_float(obj.get("longitude", 0.0)))


_DOOR_KEYS: Final = (
    "DriverFront",
    "DriverRear",
    "PassengerFront",
    "PassengerRear",
    "TrunkFront",
    "TrunkRear",
)
_TIRE_KEYS: Final = tuple(f.name for f in dataclasses.fields(TireLocation))
_TIRE_JSON_KEYS: Final = tuple(
    vehicle_data_pb2.TireLocation.DESCRIPTOR.fields_by_name[name].json_name for name in _TIRE_KEYS
)


def _pb_doors(msg: Any) -> Doors:
    return Doors(*(getattr(msg, key) for key in _DOOR_KEYS))


def _json_doors(raw: Any) -> Doors:
    obj = _json_object(raw)
    return Doors(*(_json_bool(obj.get(key, False)) for key in _DOOR_KEYS))


def _pb_tires(msg: Any) -> TireLocation:
    return TireLocation(*(getattr(msg, key) for key in _TIRE_KEYS))


def _json_tires(raw: Any) -> TireLocation:
    obj = _json_object(raw)
    return TireLocation(
        *(
            _json_bool(obj.get(camel, obj.get(snake, False)))
            for camel, snake in zip(_TIRE_JSON_KEYS, _TIRE_KEYS, strict=True)
        )
    )


def _pb_time(msg: Any) -> TimeOfDay:
    return TimeOfDay(msg.hour, msg.minute, msg.second)


def _json_time(raw: Any) -> TimeOfDay:
    obj = _json_object(raw)
    return TimeOfDay(*(_json_int(obj.get(key, 0)) for key in ("hour", "minute", "second")))


_STRING_ARM: Final = "string_value"
_INVALID_ARM: Final = "invalid"


def _arm_converters() -> tuple[dict[str, _Converter], dict[str, tuple[str, _Converter]]]:
    pb: dict[str, _Converter] = {
        "int_value": int,
        "long_value": int,
        "float_value": _float32,
        "double_value": float,
        "boolean_value": bool,
        "location_value": lambda msg: Location(msg.latitude, msg.longitude),
        "door_value": _pb_doors,
        "tire_location_value": _pb_tires,
        "time_value": _pb_time,
    }
    js: dict[str, _Converter] = {
        _STRING_ARM: _json_str,
        _INVALID_ARM: _json_bool,
        "int_value": _json_int,
        "long_value": _json_int,
        "float_value": _json_float,
        "double_value": _json_float,
        "boolean_value": _json_bool,
        "location_value": _json_location,
        "door_value": _json_doors,
        "tire_location_value": _json_tires,
        "time_value": _json_time,
    }
    by_json_key: dict[str, tuple[str, _Converter]] = {}
    oneof = vehicle_data_pb2.Value.DESCRIPTOR.oneofs_by_name["value"]
    for member in oneof.fields:
        if member.enum_type is not None:
            names = _ENUM_NAMES[member.enum_type.name]
            pb[member.name] = _pb_enum(names)
            js[member.name] = _json_enum(
                names, _ENUM_LOOKUP[member.enum_type.name], _enum_prefix(member.enum_type)
            )
        if member.name not in js:
            raise RuntimeError(f"no JSON converter for Value.{member.name}")
        if member.name not in pb and member.name not in (_STRING_ARM, _INVALID_ARM):
            raise RuntimeError(f"no protobuf converter for Value.{member.name}")
        # protojson writes lowerCamel names; proto names are accepted too.
        by_json_key[member.json_name] = (member.name, js[member.name])
        by_json_key[member.name] = (member.name, js[member.name])
    return pb, by_json_key


_PB_ARMS, _JSON_ARMS = _arm_converters()


# --------------------------------------------------------------------------- times

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Some firmware sends alert times in milliseconds; the server reads any seconds value
# from 315,576,000,000 (10,000 years) on as milliseconds. This decoder does the same for
# every timestamp, so such a value cannot overflow datetime.
_MAX_SECONDS: Final = 315_576_000_000


def _pb_timestamp(msg: Any, field: str) -> datetime | None:
    if not msg.HasField(field):
        return None
    stamp = getattr(msg, field)
    seconds, nanos = stamp.seconds, stamp.nanos
    try:
        if seconds >= _MAX_SECONDS:
            return _EPOCH + timedelta(milliseconds=seconds)
        return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)
    except OverflowError:
        return None


def _json_timestamp(raw: Any) -> datetime | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise MalformedRecord("bad_shape", f"timestamp {raw!r}")
    try:
        stamp = datetime.fromisoformat(raw)
    except ValueError:
        raise MalformedRecord("bad_shape", f"timestamp {raw!r}") from None
    return stamp.astimezone(UTC) if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def _millis(raw: bytes | None) -> datetime | None:
    if not raw:
        return None
    try:
        millis = int(raw)
        return _EPOCH + timedelta(milliseconds=millis) if millis > 0 else None
    except (ValueError, OverflowError):
        return None


# --------------------------------------------------------------------------- records

_TXTYPES: Final[Mapping[str, RecordType]] = MappingProxyType(
    {record_type.value: record_type for record_type in RecordType}
)


@lru_cache(maxsize=16)
def _topics(namespace: str) -> dict[str, RecordType]:
    return {f"{namespace}_{rt.value}": rt for rt in RecordType}


def record_type(
    topic: str, headers: Sequence[tuple[str, bytes | None]], namespace: str
) -> RecordType:
    """The record type per the ``txtype`` header, else per the topic name."""
    for key, raw in headers:
        if key == "txtype":
            return _txtype(raw)
    return _topic_type(topic, namespace)


def _txtype(raw: bytes | None) -> RecordType:
    text = (raw or b"").decode("utf-8", "replace")
    found = _TXTYPES.get(text)
    if found is None:
        raise MalformedRecord("unknown_type", f"txtype header {text!r}")
    return found


def _topic_type(topic: str, namespace: str) -> RecordType:
    found = _topics(namespace).get(topic)
    if found is None:
        raise MalformedRecord("unknown_type", f"no txtype header and topic {topic!r}")
    return found


class _Context:
    __slots__ = ("claimed_vin", "received_at", "server_vin")

    def __init__(self, server_vin: str, received_at: datetime | None) -> None:
        self.server_vin = server_vin
        self.received_at = received_at
        self.claimed_vin: str | None = None

    def vin(self, vin: Any) -> str:
        if vin is None:
            vin = ""
        if not isinstance(vin, str):
            raise MalformedRecord("bad_shape", f"vin {vin!r}")
        if not self.server_vin:
            if not vin:
                raise MalformedRecord("missing_vin")
            return vin
        # The key and the vin header are the VIN of the car's certificate. The server
        # writes it into the message too, but into connectivity messages only from
        # fleet-telemetry 0.9.1: before that, the message says whatever it said.
        if vin and vin != self.server_vin:
            self.claimed_vin = vin
        return self.server_vin

    def created_at(self, created_at: datetime | None) -> datetime:
        created_at = created_at or self.received_at
        if created_at is None:
            raise MalformedRecord("missing_created_at")
        return created_at


def _parse_pb(cls: Any, value: bytes) -> Any:
    try:
        return cls.FromString(value)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise MalformedRecord("bad_protobuf", f"{cls.__name__}: {exc}") from None


def _unknown_count(msg: Any) -> int:
    return len(UnknownFieldSet(msg))


def _telemetry_pb(value: bytes, ctx: _Context) -> TelemetryRecord:
    msg = _parse_pb(vehicle_data_pb2.Payload, value)
    unknown = _unknown_count(msg)
    unknown_keys: list[int] = []
    uncoercible: list[str] = []
    datums: list[Datum] = []
    field_names = _FIELD_NAMES
    pb_arms = _PB_ARMS
    for item in msg.data:
        field = field_names.get(item.key)
        if field is None:
            unknown += 1
            unknown_keys.append(item.key)
            continue
        holder = item.value
        arm = holder.WhichOneof("value")
        if arm is None:
            # An empty Value, or a member of a Value newer than this schema.
            if holder.ByteSize():
                unknown += 1
                continue
            datums.append(Datum(field, None))
        elif arm == _STRING_ARM:
            datums.append(_from_string(field, holder.string_value, uncoercible))
        elif arm == _INVALID_ARM:
            datums.append(Datum(field, None, holder.invalid))
        else:
            try:
                converted = pb_arms[arm](getattr(holder, arm))
            except _Unknown:
                unknown += 1
                continue
            datums.append(_from_typed(field, converted))
    return TelemetryRecord(
        vin=ctx.vin(msg.vin),
        created_at=ctx.created_at(_pb_timestamp(msg, "created_at")),
        is_resend=msg.is_resend,
        datums=tuple(datums),
        unknown_fields=unknown,
        unknown_keys=tuple(unknown_keys),
        uncoercible=tuple(uncoercible),
        received_at=ctx.received_at,
    )


def _alerts_pb(value: bytes, ctx: _Context) -> AlertsRecord:
    msg = _parse_pb(vehicle_alert_pb2.VehicleAlerts, value)
    unknown = _unknown_count(msg)
    audience_names = _AUDIENCES
    alerts = []
    for alert in msg.alerts:
        audiences = []
        for number in alert.audiences:
            name = audience_names.get(number)
            if name is None:
                unknown += 1
            else:
                audiences.append(name)
        alerts.append(
            Alert(
                name=alert.name,
                audiences=tuple(audiences),
                started_at=_pb_timestamp(alert, "started_at"),
                ended_at=_pb_timestamp(alert, "ended_at"),
            )
        )
    return AlertsRecord(
        vin=ctx.vin(msg.vin),
        created_at=ctx.created_at(_pb_timestamp(msg, "created_at")),
        alerts=tuple(alerts),
        unknown_fields=unknown,
        received_at=ctx.received_at,
    )


def _errors_pb(value: bytes, ctx: _Context) -> ErrorsRecord:
    msg = _parse_pb(vehicle_error_pb2.VehicleErrors, value)
    errors = tuple(
        VehicleError(
            name=error.name,
            body=error.body,
            tags=tuple(sorted(error.tags.items())),
            created_at=_pb_timestamp(error, "created_at"),
        )
        for error in msg.errors
    )
    return ErrorsRecord(
        vin=ctx.vin(msg.vin),
        created_at=ctx.created_at(_pb_timestamp(msg, "created_at")),
        errors=errors,
        unknown_fields=_unknown_count(msg),
        received_at=ctx.received_at,
    )


def _connectivity_pb(value: bytes, ctx: _Context) -> ConnectivityRecord:
    msg = _parse_pb(vehicle_connectivity_pb2.VehicleConnectivity, value)
    unknown = _unknown_count(msg)
    status = _STATUSES_BY_NUMBER.get(msg.status)
    if status is None:
        unknown += 1
        status = ConnectivityStatus.UNKNOWN
    return ConnectivityRecord(
        vin=ctx.vin(msg.vin),
        connection_id=msg.connection_id,
        status=status,
        network_interface=msg.network_interface,
        created_at=ctx.created_at(_pb_timestamp(msg, "created_at")),
        unknown_fields=unknown,
        received_at=ctx.received_at,
    )


_AUDIENCES: Final[Mapping[int, str]] = MappingProxyType(
    {v.number: v.name for v in vehicle_alert_pb2.DESCRIPTOR.enum_types_by_name["Audience"].values}
)
_AUDIENCE_NAMES: Final = frozenset(_AUDIENCES.values())
_STATUSES_BY_NUMBER: Final[Mapping[int, ConnectivityStatus]] = MappingProxyType(
    {
        v.number: ConnectivityStatus(v.name)
        for v in vehicle_connectivity_pb2.DESCRIPTOR.enum_types_by_name["ConnectivityEvent"].values
    }
)


# JSON ----------------------------------------------------------------------------


def _load_json(value: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(value)
    except (ValueError, RecursionError) as exc:
        raise MalformedRecord("bad_json", str(exc)) from None
    if not isinstance(obj, dict):
        raise MalformedRecord("bad_json", f"top level is {type(obj).__name__}")
    return obj


def _member(obj: dict[str, Any], camel: str, snake: str, default: Any = None) -> Any:
    # protojson writes lowerCamel JSON names; other renderers use the proto names.
    found = obj.get(camel)
    if found is None:
        found = obj.get(snake)
    return default if found is None else found


def _json_list(obj: dict[str, Any], name: str) -> list[Any]:
    items = obj.get(name)
    if items is None:
        return []
    if not isinstance(items, list):
        raise MalformedRecord("bad_shape", f"{name} is {type(items).__name__}")
    return items


def _json_record_object(item: Any, what: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise MalformedRecord("bad_shape", f"{what} is {type(item).__name__}")
    return item


def _telemetry_json(value: bytes, ctx: _Context) -> TelemetryRecord:
    obj = _load_json(value)
    unknown = 0
    unknown_keys: list[int] = []
    uncoercible: list[str] = []
    datums: list[Datum] = []
    json_arms = _JSON_ARMS
    for item in _json_list(obj, "data"):
        item = _json_record_object(item, "datum")
        key = item.get("key", "Unknown")
        if isinstance(key, str):
            field = key
            if key not in _KNOWN_FIELDS:
                # Named by a server with a newer schema: the name is still meaningful.
                unknown += 1
        elif isinstance(key, int) and not isinstance(key, bool):
            # protojson writes enum numbers it has no name for as numbers.
            named = _FIELD_NAMES.get(key)
            if named is None:
                unknown += 1
                unknown_keys.append(key)
                continue
            field = named
        else:
            raise MalformedRecord("bad_shape", f"datum key {key!r}")
        holder = item.get("value")
        if holder is None:
            datums.append(Datum(field, None))
            continue
        if not isinstance(holder, dict):
            raise MalformedRecord("bad_shape", f"{field} value is {type(holder).__name__}")
        if not holder:
            datums.append(Datum(field, None))
            continue
        found = next(((json_arms[m], raw) for m, raw in holder.items() if m in json_arms), None)
        if found is None:
            # Only members newer than this schema.
            unknown += 1
            continue
        (name, convert), raw = found
        try:
            converted = convert(raw)
        except _BadValue:
            uncoercible.append(field)
            datums.append(Datum(field, None, True))
            continue
        except _Unknown:
            unknown += 1
            continue
        if name == _STRING_ARM and isinstance(converted, str):
            datums.append(_from_string(field, converted, uncoercible))
        elif name == _INVALID_ARM:
            datums.append(Datum(field, None, bool(converted)))
        elif type(converted) is _Unlisted:
            unknown += 1
            datums.append(Datum(field, str(converted)))
        else:
            datums.append(_from_typed(field, converted))
    is_resend = _member(obj, "isResend", "is_resend", False)
    if not isinstance(is_resend, bool):
        raise MalformedRecord("bad_shape", f"isResend {is_resend!r}")
    return TelemetryRecord(
        vin=ctx.vin(obj.get("vin")),
        created_at=ctx.created_at(_json_timestamp(_member(obj, "createdAt", "created_at"))),
        is_resend=is_resend,
        datums=tuple(datums),
        unknown_fields=unknown,
        unknown_keys=tuple(unknown_keys),
        uncoercible=tuple(uncoercible),
        received_at=ctx.received_at,
    )


def _alerts_json(value: bytes, ctx: _Context) -> AlertsRecord:
    obj = _load_json(value)
    unknown = 0
    alerts = []
    for item in _json_list(obj, "alerts"):
        item = _json_record_object(item, "alert")
        audiences = []
        for audience in _json_list(item, "audiences"):
            if isinstance(audience, int) and not isinstance(audience, bool):
                audience = _AUDIENCES.get(audience)
            if isinstance(audience, str) and audience in _AUDIENCE_NAMES:
                audiences.append(audience)
            else:
                unknown += 1
        name = item.get("name", "")
        if not isinstance(name, str):
            raise MalformedRecord("bad_shape", f"alert name {name!r}")
        alerts.append(
            Alert(
                name=name,
                audiences=tuple(audiences),
                started_at=_json_timestamp(_member(item, "startedAt", "started_at")),
                ended_at=_json_timestamp(_member(item, "endedAt", "ended_at")),
            )
        )
    return AlertsRecord(
        vin=ctx.vin(obj.get("vin")),
        created_at=ctx.created_at(_json_timestamp(_member(obj, "createdAt", "created_at"))),
        alerts=tuple(alerts),
        unknown_fields=unknown,
        received_at=ctx.received_at,
    )


def _errors_json(value: bytes, ctx: _Context) -> ErrorsRecord:
    obj = _load_json(value)
    errors = []
    for item in _json_list(obj, "errors"):
        item = _json_record_object(item, "error")
        name, body = item.get("name", ""), item.get("body", "")
        tags = item.get("tags") or {}
        if (
            not isinstance(name, str)
            or not isinstance(body, str)
            or not isinstance(tags, dict)
            or not all(isinstance(v, str) for v in tags.values())
        ):
            raise MalformedRecord("bad_shape", f"error {item!r:.200}")
        errors.append(
            VehicleError(
                name=name,
                body=body,
                tags=tuple(sorted(tags.items())),
                created_at=_json_timestamp(_member(item, "createdAt", "created_at")),
            )
        )
    return ErrorsRecord(
        vin=ctx.vin(obj.get("vin")),
        created_at=ctx.created_at(_json_timestamp(_member(obj, "createdAt", "created_at"))),
        errors=tuple(errors),
        received_at=ctx.received_at,
    )


def _connectivity_json(value: bytes, ctx: _Context) -> ConnectivityRecord:
    obj = _load_json(value)
    unknown = 0
    raw_status = obj.get("status", "UNKNOWN")
    status: ConnectivityStatus | None
    if isinstance(raw_status, str):
        status = ConnectivityStatus.__members__.get(raw_status)
    elif isinstance(raw_status, int) and not isinstance(raw_status, bool):
        status = _STATUSES_BY_NUMBER.get(raw_status)
    else:
        raise MalformedRecord("bad_shape", f"status {raw_status!r}")
    if status is None:
        unknown += 1
        status = ConnectivityStatus.UNKNOWN
    connection_id = _member(obj, "connectionId", "connection_id", "")
    network_interface = _member(obj, "networkInterface", "network_interface", "")
    if not isinstance(connection_id, str) or not isinstance(network_interface, str):
        raise MalformedRecord("bad_shape", "connectionId or networkInterface is not a string")
    return ConnectivityRecord(
        vin=ctx.vin(obj.get("vin")),
        connection_id=connection_id,
        status=status,
        network_interface=network_interface,
        created_at=ctx.created_at(_json_timestamp(_member(obj, "createdAt", "created_at"))),
        unknown_fields=unknown,
        received_at=ctx.received_at,
    )


_Decoder = Callable[[bytes, _Context], Record]
_DECODERS: Final[Mapping[RecordType, tuple[_Decoder, _Decoder]]] = MappingProxyType(
    {
        RecordType.V: (_telemetry_pb, _telemetry_json),
        RecordType.ALERTS: (_alerts_pb, _alerts_json),
        RecordType.ERRORS: (_errors_pb, _errors_json),
        RecordType.CONNECTIVITY: (_connectivity_pb, _connectivity_json),
    }
)
_JSON_START: Final = ord("{")
_WHITESPACE: Final = frozenset(b" \t\r\n")


def decode_record(
    topic: str,
    headers: Sequence[tuple[str, bytes | None]],
    value: bytes | None,
    namespace: str,
    *,
    key: bytes | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
) -> Record:
    """Decode one Kafka record written by fleet-telemetry.

    The type comes from the ``txtype`` header, else from the topic
    (``<namespace>_V`` and so on); the encoding is sniffed per record. The VIN is the
    record's key (the server sets it from the car's certificate), else its ``vin``
    header, else the message's; a message claiming another VIN keeps it in
    ``claimed_vin``. Raises ``MalformedRecord`` and nothing else for records that
    cannot be decoded.
    """
    if value is None or not value:
        raise MalformedRecord("empty")
    if len(value) > max_size:
        raise MalformedRecord("oversize", f"{len(value)} bytes > {max_size}")
    txtype: bytes | None = None
    have_txtype = False
    header_vin = ""
    received: bytes | None = None
    for name, raw in headers:
        if name == "txtype":
            txtype, have_txtype = raw, True
        elif name == "vin":
            header_vin = (raw or b"").decode("utf-8", "replace")
        elif name == "receivedat":
            received = raw
    kind = _txtype(txtype) if have_txtype else _topic_type(topic, namespace)
    first = value[0]
    if first in _WHITESPACE:
        stripped = value.lstrip()
        first = stripped[0] if stripped else 0
    decoder = _DECODERS[kind][1 if first == _JSON_START else 0]
    context = _Context(_key_vin(key) or header_vin, _millis(received))
    try:
        record = decoder(value, context)
    except MalformedRecord:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        # Shapes the checks above did not foresee; one record must not stop a consumer.
        raise MalformedRecord("bad_shape", f"{type(exc).__name__}: {exc}") from None
    if context.claimed_vin is not None:
        record = dataclasses.replace(record, claimed_vin=context.claimed_vin[:_MAX_VIN_CHARS])
    return record


_MAX_VIN_CHARS: Final = 64


@lru_cache(maxsize=65536)
def _key_vin(key: bytes | None) -> str:
    """The VIN a record key holds (raw bytes), or "" if the key cannot be one."""
    if not key or len(key) > _MAX_VIN_CHARS:
        return ""
    try:
        text = key.decode("ascii")
    except UnicodeDecodeError:
        return ""
    return text if text.isprintable() and not text.isspace() else ""
