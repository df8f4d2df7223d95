"""Decoding fleet-telemetry Kafka records, as the real server writes them.

Protobuf values are built with the generated classes and serialised; JSON values are
rendered with json_format the way the server's protojson renders them (lowerCamel
names, enum names, int64 as strings, unpopulated fields emitted) and also written out
by hand in the shape upstream's own tests and issues show.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from google.protobuf import json_format
from google.protobuf.message import Message
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from gridmate.vehicles.state import StateStore
from gridmate.vehicles.telemetry import (
    FIELD_KINDS,
    FIELD_NAMES,
    Alert,
    AlertsRecord,
    ConnectivityRecord,
    ConnectivityStatus,
    Datum,
    Doors,
    ErrorsRecord,
    FieldKind,
    Location,
    MalformedRecord,
    RecordType,
    TelemetryRecord,
    TimeOfDay,
    TireLocation,
    decode_record,
    enum_options,
    field_kind,
    record_type,
)
from gridmate.vehicles.telemetry.decode import DEFAULT_MAX_SIZE
from gridmate.vehicles.telemetry.ingest import RateLimitedLog, RecordIngest
from gridmate.vehicles.telemetry.proto import (
    vehicle_alert_pb2,
    vehicle_connectivity_pb2,
    vehicle_data_pb2,
    vehicle_error_pb2,
)
from gridmate.vehicles.telemetry.source import FleetTelemetrySource

ROOT = Path(__file__).resolve().parent.parent
NS = "tesla_telemetry"
VIN = "5YJ3E1EA7KF000001"
CREATED = datetime(2024, 11, 20, 8, 30, 15, 250000, tzinfo=UTC)
RECEIVED_MS = 1_732_091_416_000
RECEIVED = datetime(2024, 11, 20, 8, 30, 16, tzinfo=UTC)


def headers(txtype: str | None = "V", **extra: str) -> list[tuple[str, bytes]]:
    """Headers as record.go's Metadata() sets them."""
    out = [
        ("vin", VIN.encode()),
        ("receivedat", str(RECEIVED_MS).encode()),
        ("timestamp", b"0"),
        ("txid", b"a4c1e6b2-0000-4000-8000-000000000001"),
        ("version", b"0"),
        ("device_client_version", b"1.2.0"),
    ]
    if txtype is not None:
        out.append(("txtype", txtype.encode()))
    out.extend((key, value.encode()) for key, value in extra.items())
    return out


def decode(value: bytes, txtype: str | None = "V", topic: str | None = None) -> Any:
    topic = topic or f"{NS}_{txtype or 'V'}"
    return decode_record(topic, headers(txtype), value, NS)


def protojson(message: Message) -> bytes:
    """What the server sends with transmit_decoded_records (EmitUnpopulated)."""
    return json_format.MessageToJson(
        message, indent=None, always_print_fields_with_no_presence=True
    ).encode()


def payload(*datums: vehicle_data_pb2.Datum, resend: bool = False) -> vehicle_data_pb2.Payload:
    msg = vehicle_data_pb2.Payload(vin=VIN, is_resend=resend, data=list(datums))
    msg.created_at.FromDatetime(CREATED)
    return msg


def datum(key: int, **value: Any) -> vehicle_data_pb2.Datum:
    if not value:
        return vehicle_data_pb2.Datum(key=key)
    return vehicle_data_pb2.Datum(key=key, value=vehicle_data_pb2.Value(**value))


def by_field(record: TelemetryRecord) -> dict[str, Datum]:
    return {d.field: d for d in record.datums}


F = vehicle_data_pb2

TYPED_DATUMS = [
    datum(F.BatteryLevel, double_value=80.5),
    datum(F.VehicleSpeed, float_value=42.3),
    datum(F.Odometer, double_value=12345.6),
    datum(F.ChargeLimitSoc, int_value=80),
    datum(F.EnergyRemaining, int_value=55),
    datum(F.MediaNowPlayingDuration, long_value=18_000_000),
    datum(F.Locked, boolean_value=True),
    datum(F.Location, location_value=F.LocationValue(latitude=37.412374, longitude=-122.145867)),
    datum(F.Gear, shift_state_value=F.ShiftStateD),
    datum(F.SentryMode, sentry_mode_state_value=F.SentryModeStateArmed),
    datum(F.DetailedChargeState, detailed_charge_state_value=F.DetailedChargeStateCharging),
    datum(F.SettingChargeUnit, charge_unit_preference_value=F.ChargeUnitPercent),
    datum(F.ChargingCableType, cable_type_value=F.CableTypeGB_AC),
    datum(F.CruiseFollowDistance, follow_distance_value=F.FollowDistance3),
    datum(F.DoorState, door_value=F.Doors(DriverFront=True, TrunkRear=True)),
    datum(F.TpmsSoftWarnings, tire_location_value=F.TireLocation(front_left=True)),
    datum(F.ScheduledDepartureTime, time_value=F.Time(hour=7, minute=5, second=0)),
    datum(F.VehicleName, string_value="Blue Thunder"),
    datum(F.MinutesToArrival, invalid=True),
    datum(F.TimeToFullCharge),
]

TYPED_EXPECTED = {
    "BatteryLevel": Datum("BatteryLevel", 80.5),
    # float32 on the wire; decoded to the shortest decimal, as protojson renders it.
    "VehicleSpeed": Datum("VehicleSpeed", 42.3),
    "Odometer": Datum("Odometer", 12345.6),
    "ChargeLimitSoc": Datum("ChargeLimitSoc", 80),
    # A real-valued field sent in an integer member still comes out a float.
    "EnergyRemaining": Datum("EnergyRemaining", 55.0),
    "MediaNowPlayingDuration": Datum("MediaNowPlayingDuration", 18_000_000),
    "Locked": Datum("Locked", True),
    "Location": Datum("Location", Location(37.412374, -122.145867)),
    "Gear": Datum("Gear", "D"),
    "SentryMode": Datum("SentryMode", "Armed"),
    "DetailedChargeState": Datum("DetailedChargeState", "Charging"),
    "SettingChargeUnit": Datum("SettingChargeUnit", "Percent"),
    "ChargingCableType": Datum("ChargingCableType", "GB_AC"),
    "CruiseFollowDistance": Datum("CruiseFollowDistance", "3"),
    "DoorState": Datum("DoorState", Doors(True, False, False, False, False, True)),
    "TpmsSoftWarnings": Datum("TpmsSoftWarnings", TireLocation(True, *([False] * 9))),
    "ScheduledDepartureTime": Datum("ScheduledDepartureTime", TimeOfDay(7, 5, 0)),
    "VehicleName": Datum("VehicleName", "Blue Thunder"),
    "MinutesToArrival": Datum("MinutesToArrival", None, invalid=True),
    "TimeToFullCharge": Datum("TimeToFullCharge", None),
}


# ------------------------------------------------------------------- V records


def test_protobuf_typed_values() -> None:
    record = decode(payload(*TYPED_DATUMS, resend=True).SerializeToString())
    assert isinstance(record, TelemetryRecord)
    assert record.record_type is RecordType.V
    assert record.vin == VIN
    assert record.created_at == CREATED
    assert record.received_at == RECEIVED
    assert record.is_resend is True
    assert by_field(record) == TYPED_EXPECTED
    assert [d.field for d in record.datums] == list(TYPED_EXPECTED)
    assert isinstance(by_field(record)["EnergyRemaining"].value, float)
    assert record.unknown_fields == 0
    assert record.unknown_keys == ()
    assert record.uncoercible == ()


def test_protojson_of_the_same_message_decodes_identically() -> None:
    message = payload(*TYPED_DATUMS, resend=True)
    from_pb = decode(message.SerializeToString())
    body = protojson(message)
    rendered = json.loads(body)
    # The shape the server's protojson uses: lowerCamel, enum names, int64 as string.
    assert rendered["isResend"] is True
    assert rendered["createdAt"] == "2024-11-20T08:30:15.250Z"
    assert {"key": "Gear", "value": {"shiftStateValue": "ShiftStateD"}} in rendered["data"]
    assert {
        "key": "MediaNowPlayingDuration",
        "value": {"longValue": "18000000"},
    } in rendered["data"]
    assert decode(body) == from_pb


def test_upstream_record_test_json_shape() -> None:
    # Verbatim shape of the expected output in fleet-telemetry's telemetry/record_test.go:
    # a payload without created_at falls back to the server's receive time.
    body = (
        b'{"data":[{"key":"VehicleName","value":{"stringValue":"cybertruck"}}],'
        b'"isResend":false,"createdAt":null,"vin":"42"}'
    )
    # The server's headers name the same VIN as the message it rewrote.
    hdrs = [(name, b"42" if name == "vin" else raw) for name, raw in headers("V")]
    record = decode_record(f"{NS}_V", hdrs, body, NS)
    assert record == TelemetryRecord(
        vin="42",
        created_at=RECEIVED,
        is_resend=False,
        datums=(Datum("VehicleName", "cybertruck"),),
        received_at=RECEIVED,
    )


def test_handwritten_protojson_covering_every_value_shape() -> None:
    body = json.dumps(
        {
            "data": [
                {"key": "BatteryLevel", "value": {"doubleValue": 80.5}},
                {"key": "VehicleSpeed", "value": {"floatValue": 42.3}},
                {"key": "ChargeLimitSoc", "value": {"intValue": 80}},
                {"key": "MediaNowPlayingElapsed", "value": {"longValue": "125000"}},
                {"key": "Locked", "value": {"booleanValue": False}},
                {
                    "key": "Location",
                    "value": {"locationValue": {"latitude": 52.52, "longitude": 13.405}},
                },
                {"key": "Gear", "value": {"shiftStateValue": "ShiftStateP"}},
                {"key": "HvacPower", "value": {"hvacPowerValue": "HvacPowerStatePrecondition"}},
                {
                    "key": "DoorState",
                    "value": {
                        "doorValue": {
                            "DriverFront": False,
                            "DriverRear": True,
                            "PassengerFront": False,
                            "PassengerRear": False,
                            "TrunkFront": False,
                            "TrunkRear": False,
                        }
                    },
                },
                {"key": "TpmsHardWarnings", "value": {"tireLocationValue": {"rearRight": True}}},
                {
                    "key": "ScheduledDepartureTime",
                    "value": {"timeValue": {"hour": 6, "minute": 45, "second": 0}},
                },
                {"key": "DestinationName", "value": {"invalid": True}},
                {"key": "InsideTemp", "value": {"floatValue": "NaN"}},
                {"key": "VehicleSpeed", "value": None},
                {"key": "DoorState", "value": {}},
                {"key": "Soc"},
            ],
            "createdAt": "2024-11-20T08:30:15.250000123Z",
            "vin": VIN,
            "isResend": False,
        }
    ).encode()
    record = decode(body)
    assert record.created_at == CREATED
    assert record.datums == (
        Datum("BatteryLevel", 80.5),
        Datum("VehicleSpeed", 42.3),
        Datum("ChargeLimitSoc", 80),
        Datum("MediaNowPlayingElapsed", 125000),
        Datum("Locked", False),
        Datum("Location", Location(52.52, 13.405)),
        Datum("Gear", "P"),
        Datum("HvacPower", "Precondition"),
        Datum("DoorState", Doors(False, True, False, False, False, False)),
        Datum("TpmsHardWarnings", TireLocation(False, False, False, True, *([False] * 6))),
        Datum("ScheduledDepartureTime", TimeOfDay(6, 45, 0)),
        Datum("DestinationName", None, invalid=True),
        # NaN means the signal has no usable value.
        Datum("InsideTemp", None, invalid=True),
        Datum("VehicleSpeed", None),
        Datum("DoorState", None),
        Datum("Soc", None),
    )
    assert record.unknown_fields == 0


def test_json_with_proto_field_names_is_accepted() -> None:
    message = payload(*TYPED_DATUMS)
    body = json_format.MessageToJson(message, indent=None, preserving_proto_field_name=True)
    assert '"created_at"' in body and '"double_value"' in body
    assert decode(body.encode()) == decode(message.SerializeToString())


def test_leading_whitespace_before_json() -> None:
    message = payload(datum(F.Soc, double_value=71.0))
    assert decode(b" \n" + protojson(message)) == decode(message.SerializeToString())


def test_empty_door_state_means_no_door_open() -> None:
    # DoorState can arrive as an empty object (fleet-telemetry #449).
    message = payload(datum(F.DoorState, door_value=F.Doors()))
    expected = Datum("DoorState", Doors(False, False, False, False, False, False))
    assert decode(message.SerializeToString()).datums == (expected,)
    assert decode(protojson(message)).datums == (expected,)


# ------------------------------------------------- strings from older firmware

STRING_CASES = [
    ("BatteryLevel", "80.5", Datum("BatteryLevel", 80.5)),
    ("InsideTemp", "21.30000091344118", Datum("InsideTemp", 21.30000091344118)),
    # fleet-telemetry rewrites scientific notation to "%.5f" before publishing.
    ("PackCurrent", "0.00100", Datum("PackCurrent", 0.001)),
    ("PackCurrent", "1e-3", Datum("PackCurrent", 0.001)),
    ("ChargeLimitSoc", "80", Datum("ChargeLimitSoc", 80)),
    ("ChargerPhases", "3.0", Datum("ChargerPhases", 3)),
    ("PowershareHoursLeft", "1.5", Datum("PowershareHoursLeft", 1.5)),
    ("TpmsLastSeenPressureTimeFl", "1732091416", Datum("TpmsLastSeenPressureTimeFl", 1732091416)),
    ("Locked", "true", Datum("Locked", True)),
    ("Locked", "false", Datum("Locked", False)),
    ("FastChargerPresent", "1", Datum("FastChargerPresent", True)),
    ("Gear", "D", Datum("Gear", "D")),
    ("Gear", "ShiftStateR", Datum("Gear", "R")),
    ("SentryMode", "Armed", Datum("SentryMode", "Armed")),
    ("SentryMode", "SentryModeStateAware", Datum("SentryMode", "Aware")),
    ("ChargePortLatch", "Engaged", Datum("ChargePortLatch", "Engaged")),
    ("ChargeState", "Charging", Datum("ChargeState", "Charging")),
    ("ChargeState", "ChargeStateDisconnected", Datum("ChargeState", "Disconnected")),
    (
        "ScheduledChargingMode",
        "ScheduledChargingModeStartAt",
        Datum("ScheduledChargingMode", "StartAt"),
    ),
    ("SettingDistanceUnit", "kilometers", Datum("SettingDistanceUnit", "Kilometers")),
    # An enum value this schema does not know yet is still passed on.
    ("CarType", "Roadster", Datum("CarType", "Roadster")),
    (
        "Location",
        "(37.412374 N, 122.145867 W)",
        Datum("Location", Location(37.412374, -122.145867)),
    ),
    (
        "DestinationLocation",
        "(33.8688 S, 151.2093 E)",
        Datum("DestinationLocation", Location(-33.8688, 151.2093)),
    ),
    ("VehicleName", "1e5", Datum("VehicleName", "1e5")),
    ("Version", "2024.44.25.3 1a2b3c4d", Datum("Version", "2024.44.25.3 1a2b3c4d")),
    ("Experimental_1", "anything", Datum("Experimental_1", "anything")),
]


@pytest.mark.parametrize(("field", "text", "expected"), STRING_CASES)
def test_string_values_are_coerced_by_field(field: str, text: str, expected: Datum) -> None:
    message = payload(datum(F.Field.Value(field), string_value=text))
    record = decode(message.SerializeToString())
    assert record.datums == (expected,)
    assert type(record.datums[0].value) is type(expected.value)
    assert record.uncoercible == ()
    assert decode(protojson(message)) == record


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("BatteryLevel", "n/a"),
        ("ChargeLimitSoc", "eighty"),
        ("Locked", "maybe"),
        ("Location", "home"),
    ],
)
def test_unparseable_strings_become_invalid(field: str, text: str) -> None:
    record = decode(payload(datum(F.Field.Value(field), string_value=text)).SerializeToString())
    assert record.datums == (Datum(field, None, invalid=True),)
    assert record.uncoercible == (field,)


@pytest.mark.parametrize(
    ("field", "arm", "number", "expected"),
    [
        ("Gear", "shift_state_value", F.ShiftStateSNA, "SNA"),
        ("CarType", "car_type_value", F.CarTypeModelY, "ModelY"),
        ("BMSState", "bms_state_value", F.BMSStateClearFault, "ClearFault"),
        ("SettingTirePressureUnit", "pressure_unit_value", F.PressureUnitBar, "Bar"),
        ("LightsTurnSignal", "turn_signal_state_value", F.TurnSignalStateBoth, "Both"),
        ("MediaPlaybackStatus", "media_status_value", F.MediaStatusPaused, "Paused"),
    ],
)
def test_enum_members_lose_their_prefix(field: str, arm: str, number: int, expected: str) -> None:
    message = payload(datum(F.Field.Value(field), **{arm: number}))
    assert decode(message.SerializeToString()).datums == (Datum(field, expected),)
    assert decode(protojson(message)).datums == (Datum(field, expected),)
    assert expected in enum_options(field)


def test_numbers_in_other_members_follow_the_field_kind() -> None:
    record = decode(
        payload(
            datum(F.ChargeLimitSoc, double_value=90.0),
            datum(F.Soc, long_value=64),
            datum(F.Locked, int_value=0),
            datum(F.ChargeAmps, float_value=float("inf")),
        ).SerializeToString()
    )
    assert record.datums == (
        Datum("ChargeLimitSoc", 90),
        Datum("Soc", 64.0),
        Datum("Locked", False),
        Datum("ChargeAmps", None, invalid=True),
    )
    assert [type(d.value) for d in record.datums[:3]] == [int, float, bool]


def test_float32_values_decode_to_their_shortest_decimal() -> None:
    for number in (0.1, 21.3, 1013.25, -3.4028234e38, 1e-7, 123456.79):
        message = payload(datum(F.OutsideTemp, float_value=number))
        decoded = decode(message.SerializeToString()).datums[0].value
        assert decoded == decode(protojson(message)).datums[0].value
        assert isinstance(decoded, float) and math.isclose(decoded, number, rel_tol=1e-6)


def test_invalid_false_is_not_invalid() -> None:
    record = decode(payload(datum(F.Soc, invalid=False)).SerializeToString())
    assert record.datums == (Datum("Soc", None, invalid=False),)


# ------------------------------------------------------------- unknown fields


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        out.append(low | (0x80 if number else 0))
        if not number:
            return bytes(out)


def _field(number: int, wire_type: int, body: bytes) -> bytes:
    tag = _varint(number << 3 | wire_type)
    if wire_type == 2:
        return tag + _varint(len(body)) + body
    return tag + body


def test_unknown_field_numbers_are_counted_not_fatal() -> None:
    known = payload(datum(F.BatteryLevel, double_value=50.0))
    future_key = _field(1, 2, _field(1, 0, _varint(300)) + _field(2, 2, _field(5, 1, b"\0" * 8)))
    future_member = _field(
        1, 2, _field(1, 0, _varint(F.Soc)) + _field(2, 2, _field(60, 0, b"\x01"))
    )
    future_enum_value = _field(
        1, 2, _field(1, 0, _varint(F.Gear)) + _field(2, 2, _field(9, 0, _varint(42)))
    )
    future_payload_field = _field(17, 2, b"new")
    body = (
        known.SerializeToString()
        + future_key
        + future_member
        + future_enum_value
        + future_payload_field
    )
    record = decode(body)
    assert record.datums == (Datum("BatteryLevel", 50.0),)
    assert record.unknown_keys == (300,)
    assert record.unknown_fields == 4
    assert record.vin == VIN


def test_unknown_keys_in_json() -> None:
    body = json.dumps(
        {
            "data": [
                # protojson writes enum numbers without a name as numbers.
                {"key": 300, "value": {"doubleValue": 1.5}},
                # A server with a newer schema names fields this one lacks.
                {"key": "ShinyNewSignal", "value": {"stringValue": "on"}},
                {"key": "Soc", "value": {"brandNewValue": "x"}},
                {"key": "Gear", "value": {"shiftStateValue": "ShiftStateWarp"}},
                {"key": 42, "value": {"doubleValue": 77.0}},
            ],
            "createdAt": "2024-11-20T08:30:15.250Z",
            "vin": VIN,
            "isResend": False,
        }
    ).encode()
    record = decode(body)
    assert record.datums == (
        Datum("ShinyNewSignal", "on"),
        Datum("Gear", "Warp"),
        Datum("BatteryLevel", 77.0),
    )
    assert record.unknown_keys == (300,)
    assert record.unknown_fields == 4


def test_json_rendering_of_unknown_key_matches_protobuf() -> None:
    message = payload(datum(F.BatteryLevel, double_value=50.0))
    message.data.add(key=301).value.double_value = 2.0
    from_pb = decode(message.SerializeToString())
    from_json = decode(protojson(message))
    assert from_pb == from_json
    assert from_pb.unknown_keys == (301,)


# ------------------------------------------------------------ other record types


def alerts_message() -> vehicle_alert_pb2.VehicleAlerts:
    msg = vehicle_alert_pb2.VehicleAlerts(vin=VIN)
    msg.created_at.FromDatetime(CREATED)
    active = msg.alerts.add(
        name="ChargePort_a001_lockFailed",
        audiences=[vehicle_alert_pb2.Customer, vehicle_alert_pb2.Service],
    )
    active.started_at.FromDatetime(CREATED - timedelta(minutes=5))
    ended = msg.alerts.add(name="BMS_w035_SW_Dcdc_Fault", audiences=[vehicle_alert_pb2.ServiceFix])
    ended.started_at.FromDatetime(CREATED - timedelta(hours=1))
    ended.ended_at.FromDatetime(CREATED - timedelta(minutes=30))
    return msg


EXPECTED_ALERTS = AlertsRecord(
    vin=VIN,
    created_at=CREATED,
    alerts=(
        Alert(
            "ChargePort_a001_lockFailed",
            ("Customer", "Service"),
            CREATED - timedelta(minutes=5),
            None,
        ),
        Alert(
            "BMS_w035_SW_Dcdc_Fault",
            ("ServiceFix",),
            CREATED - timedelta(hours=1),
            CREATED - timedelta(minutes=30),
        ),
    ),
    received_at=RECEIVED,
)


def test_alerts_protobuf_and_json() -> None:
    message = alerts_message()
    assert decode(message.SerializeToString(), "alerts") == EXPECTED_ALERTS
    assert decode(protojson(message), "alerts") == EXPECTED_ALERTS
    assert [alert.active for alert in EXPECTED_ALERTS.alerts] == [True, False]
    handwritten = json.dumps(
        {
            "alerts": [
                {
                    "name": "ChargePort_a001_lockFailed",
                    "audiences": ["Customer", "Service"],
                    "startedAt": "2024-11-20T08:25:15.250Z",
                    "endedAt": None,
                },
                {
                    "name": "BMS_w035_SW_Dcdc_Fault",
                    "audiences": ["ServiceFix"],
                    "startedAt": "2024-11-20T07:30:15.250Z",
                    "endedAt": "2024-11-20T08:00:15.250Z",
                },
            ],
            "createdAt": "2024-11-20T08:30:15.250Z",
            "vin": VIN,
        }
    ).encode()
    assert decode(handwritten, "alerts") == EXPECTED_ALERTS


def test_alert_times_in_milliseconds_are_read_as_such() -> None:
    message = vehicle_alert_pb2.VehicleAlerts(vin=VIN)
    message.created_at.FromDatetime(CREATED)
    alert = message.alerts.add(name="X", audiences=[7])
    alert.started_at.seconds = int(CREATED.timestamp() * 1000)
    record = decode(message.SerializeToString(), "alerts")
    assert record.alerts[0].started_at == CREATED
    assert record.alerts[0].audiences == ()
    assert record.unknown_fields == 1


def test_errors_protobuf_and_json() -> None:
    message = vehicle_error_pb2.VehicleErrors(vin=VIN)
    message.created_at.FromDatetime(CREATED)
    error = message.errors.add(name="telemetry_err", body="bad field", tags={"b": "2", "a": "1"})
    error.created_at.FromDatetime(CREATED)
    message.errors.add(name="no_time")
    record = decode(message.SerializeToString(), "errors")
    assert isinstance(record, ErrorsRecord)
    assert record.errors[0].tags == (("a", "1"), ("b", "2"))
    assert record.errors[0].tag("b") == "2"
    assert record.errors[0].created_at == CREATED
    assert record.errors[1].created_at is None
    assert decode(protojson(message), "errors") == record
    handwritten = json.dumps(
        {
            "errors": [
                {
                    "createdAt": "2024-11-20T08:30:15.250Z",
                    "name": "telemetry_err",
                    "tags": {"a": "1", "b": "2"},
                    "body": "bad field",
                },
                {"createdAt": None, "name": "no_time", "tags": {}, "body": ""},
            ],
            "createdAt": "2024-11-20T08:30:15.250Z",
            "vin": VIN,
        }
    ).encode()
    assert decode(handwritten, "errors") == record


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (vehicle_connectivity_pb2.CONNECTED, ConnectivityStatus.CONNECTED),
        (vehicle_connectivity_pb2.DISCONNECTED, ConnectivityStatus.DISCONNECTED),
    ],
)
def test_connectivity_protobuf_and_json(status: int, expected: ConnectivityStatus) -> None:
    message = vehicle_connectivity_pb2.VehicleConnectivity(
        vin=VIN,
        connection_id="3d6f1c1e-6d70-4bb5-9a2c-5d2a4ff0a001",
        status=status,
        network_interface="wifi",
    )
    message.created_at.FromDatetime(CREATED)
    want = ConnectivityRecord(
        vin=VIN,
        connection_id="3d6f1c1e-6d70-4bb5-9a2c-5d2a4ff0a001",
        status=expected,
        network_interface="wifi",
        created_at=CREATED,
        received_at=RECEIVED,
    )
    assert decode(message.SerializeToString(), "connectivity") == want
    assert decode(protojson(message), "connectivity") == want
    handwritten = json.dumps(
        {
            "vin": VIN,
            "connectionId": "3d6f1c1e-6d70-4bb5-9a2c-5d2a4ff0a001",
            "status": expected.value,
            "createdAt": "2024-11-20T08:30:15.250Z",
            "networkInterface": "wifi",
        }
    ).encode()
    assert decode(handwritten, "connectivity") == want
    assert want.status == expected.value


def test_connectivity_status_from_newer_server() -> None:
    message = vehicle_connectivity_pb2.VehicleConnectivity(vin=VIN, status=9)
    message.created_at.FromDatetime(CREATED)
    record = decode(message.SerializeToString(), "connectivity")
    assert record.status is ConnectivityStatus.UNKNOWN
    assert record.unknown_fields == 1


# --------------------------------------------------------- record type selection


def test_header_decides_over_topic() -> None:
    message = vehicle_connectivity_pb2.VehicleConnectivity(vin=VIN, status=1)
    message.created_at.FromDatetime(CREATED)
    record = decode_record(f"{NS}_V", headers("connectivity"), message.SerializeToString(), NS)
    assert isinstance(record, ConnectivityRecord)


@pytest.mark.parametrize(
    ("suffix", "cls"),
    [
        ("V", TelemetryRecord),
        ("alerts", AlertsRecord),
        ("errors", ErrorsRecord),
        ("connectivity", ConnectivityRecord),
    ],
)
def test_topic_fallback_without_txtype_header(suffix: str, cls: type) -> None:
    empty_with_time = {"vin": VIN, "createdAt": "2024-11-20T08:30:15.250Z"}
    record = decode_record(
        f"{NS}_{suffix}", headers(None), json.dumps(empty_with_time).encode(), NS
    )
    assert isinstance(record, cls)
    assert record_type(f"{NS}_{suffix}", headers(None), NS) is RecordType(suffix)


def test_headers_may_have_missing_values() -> None:
    body = payload(datum(F.Soc, double_value=1.0)).SerializeToString()
    record = decode_record(
        "elsewhere", [("txtype", b"V"), ("vin", None), ("receivedat", None)], body, NS
    )
    assert record.vin == VIN and record.received_at is None


@pytest.mark.parametrize(
    ("topic", "hdrs", "detail"),
    [
        (f"{NS}_metrics", headers("metrics"), "txtype header 'metrics'"),
        (f"{NS}_V", [("txtype", b"")], "txtype header ''"),
        ("other_V", headers(None), "topic 'other_V'"),
        (f"{NS}_alerts_x", headers(None), "topic"),
    ],
)
def test_unknown_record_type(topic: str, hdrs: list[tuple[str, bytes]], detail: str) -> None:
    with pytest.raises(MalformedRecord) as caught:
        decode_record(topic, hdrs, b'{"vin":"x"}', NS)
    assert caught.value.reason == "unknown_type"
    assert detail in caught.value.detail


# ------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    ("value", "txtype", "reason"),
    [
        (b"", "V", "empty"),
        (b"\x0a\xff\xff\xff", "V", "bad_protobuf"),
        (b"\x0a\x05abc", "alerts", "bad_protobuf"),
        (b"\x0a\x02\xff\xfe", "connectivity", "bad_protobuf"),
        (b"{not json", "V", "bad_json"),
        (b'{"vin": "x"', "errors", "bad_json"),
        (b"{\xff}", "V", "bad_json"),
        (b'{"data": {"key": "Soc"}, "vin": "x"}', "V", "bad_shape"),
        (b'{"data": ["Soc"], "vin": "x"}', "V", "bad_shape"),
        (b'{"data": [{"key": 1.5}], "vin": "x"}', "V", "bad_shape"),
        (b'{"data": [{"key": "Soc", "value": 3}], "vin": "x"}', "V", "bad_shape"),
        (b'{"vin": 42}', "V", "bad_shape"),
        (b'{"vin": "x", "createdAt": "yesterday"}', "V", "bad_shape"),
        (b'{"vin": "x", "createdAt": 12}', "connectivity", "bad_shape"),
        (b'{"vin": "x", "isResend": "no"}', "V", "bad_shape"),
        (b'{"vin": "x", "status": [1]}', "connectivity", "bad_shape"),
        (b'{"vin": "x", "errors": [{"tags": {"a": 1}}]}', "errors", "bad_shape"),
        (b'{"vin": "x", "alerts": [{"name": 5}]}', "alerts", "bad_shape"),
        (b"[1, 2]", "V", "bad_protobuf"),
    ],
)
def test_malformed_values(value: bytes, txtype: str, reason: str) -> None:
    with pytest.raises(MalformedRecord) as caught:
        decode(value, txtype)
    assert caught.value.reason == reason


def test_oversize_records_are_refused_before_parsing() -> None:
    body = payload(*TYPED_DATUMS).SerializeToString()
    decode_record(f"{NS}_V", headers(), body, NS, max_size=len(body))
    with pytest.raises(MalformedRecord) as caught:
        decode_record(f"{NS}_V", headers(), body, NS, max_size=len(body) - 1)
    assert caught.value.reason == "oversize"


def test_missing_vin_and_created_at() -> None:
    no_vin = vehicle_data_pb2.Payload()
    no_vin.created_at.FromDatetime(CREATED)
    with pytest.raises(MalformedRecord) as caught:
        decode_record(f"{NS}_V", [("txtype", b"V")], no_vin.SerializeToString(), NS)
    assert caught.value.reason == "missing_vin"
    # The vin header covers a message without one.
    assert decode(no_vin.SerializeToString()).vin == VIN

    no_time = vehicle_data_pb2.Payload(vin=VIN).SerializeToString()
    assert decode(no_time).created_at == RECEIVED
    with pytest.raises(MalformedRecord) as caught:
        decode_record(f"{NS}_V", [("txtype", b"V")], no_time, NS)
    assert caught.value.reason == "missing_created_at"


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.datetimes(timezones=st.just(UTC)).map(lambda when: when.isoformat()),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "data",
                    "key",
                    "value",
                    "vin",
                    "createdAt",
                    "isResend",
                    "alerts",
                    "errors",
                    "audiences",
                    "startedAt",
                    "endedAt",
                    "tags",
                    "name",
                    "body",
                    "status",
                    "connectionId",
                    "networkInterface",
                    "doubleValue",
                    "stringValue",
                    "intValue",
                    "longValue",
                    "floatValue",
                    "booleanValue",
                    "invalid",
                    "locationValue",
                    "shiftStateValue",
                    "doorValue",
                    "timeValue",
                    "tireLocationValue",
                    "latitude",
                    "hour",
                    "DriverFront",
                    "Soc",
                    "BatteryLevel",
                    "Gear",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)
TXTYPES = st.sampled_from(["V", "alerts", "errors", "connectivity"])


MALFORMED_REASONS = frozenset(
    {
        "oversize",
        "empty",
        "unknown_type",
        "bad_protobuf",
        "bad_json",
        "bad_shape",
        "missing_vin",
        "missing_created_at",
    }
)
VALID_LEVEL = 42.5


def _message(value: bytes, txtype: str, offset: int) -> ConsumerRecord:
    return ConsumerRecord(
        topic=f"{NS}_{txtype}",
        partition=0,
        offset=offset,
        timestamp=RECEIVED_MS,
        timestamp_type=0,
        key=VIN.encode(),
        value=value,
        checksum=None,
        serialized_key_size=len(VIN),
        serialized_value_size=len(value),
        headers=headers(txtype),
    )


def _decode_or_malformed(value: bytes, txtype: str) -> None:
    """The fuzzed record is decoded or refused for a documented reason, and counted
    as exactly one of the two; a valid record after it still applies."""
    try:
        decode_record(f"{NS}_{txtype}", headers(txtype), value, NS, key=VIN.encode())
    except MalformedRecord as error:
        assert error.reason in MALFORMED_REASONS, error.reason
        refused: str | None = error.reason
    else:
        refused = None
    registry = CollectorRegistry()
    store = StateStore()
    ingest = RecordIngest(
        FleetTelemetrySource(store),
        namespace=NS,
        max_record_bytes=DEFAULT_MAX_SIZE,
        max_clock_skew=300.0,
        now=lambda: RECEIVED,
        registry=registry,
        warnings=RateLimitedLog(10.0),
    )

    def count(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    applied = ingest(_message(value, txtype, 1))
    decoded = count("gridmate_vehicles_records_total", type=txtype)
    if refused is not None:
        assert applied is None and decoded == 0
        assert count("gridmate_vehicles_malformed_records_total", reason=refused) == 1
    else:
        assert decoded == 1
        assert applied is not None
        assert count("gridmate_vehicles_malformed_records_total", reason="unprocessable") == 0
    # Whatever the fuzzed record said (a time in year 9999 included), the car's next
    # real value is shown.
    valid = payload(datum(F.BatteryLevel, double_value=VALID_LEVEL))
    valid.created_at.FromDatetime(RECEIVED + timedelta(seconds=1))
    after = ingest(_message(valid.SerializeToString(), "V", 2))
    assert after is not None and "battery_level" in after.changed
    assert store.vehicle(VIN).value("battery_level") == VALID_LEVEL
    assert count("gridmate_vehicles_records_total", type="V") == decoded * (txtype == "V") + 1


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(value=st.binary(max_size=300), txtype=TXTYPES)
def test_random_bytes_only_raise_malformed_record(value: bytes, txtype: str) -> None:
    _decode_or_malformed(value, txtype)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    obj=st.dictionaries(
        st.sampled_from(
            ["data", "vin", "createdAt", "alerts", "errors", "status", "isResend", "connectionId"]
        ),
        JSON_VALUES,
        max_size=5,
    ),
    txtype=TXTYPES,
)
@example(
    obj={
        "vin": VIN,
        "createdAt": "2999-01-01T00:00:00Z",
        "data": [{"key": "BatteryLevel", "value": {"doubleValue": 99.0}}],
    },
    txtype="V",
)
def test_random_json_only_raises_malformed_record(obj: dict[str, Any], txtype: str) -> None:
    _decode_or_malformed(json.dumps(obj).encode(), txtype)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    cut=st.integers(min_value=0, max_value=400),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
    txtype=TXTYPES,
)
def test_mutated_protobuf_only_raises_malformed_record(
    cut: int, flips: list[tuple[int, int]], txtype: str
) -> None:
    base = {
        "V": payload(*TYPED_DATUMS),
        "alerts": alerts_message(),
    }.get(txtype, payload(*TYPED_DATUMS))
    body = bytearray(base.SerializeToString()[: max(cut, 1)])
    for position, byte in flips:
        body[position % len(body)] = byte
    _decode_or_malformed(bytes(body), txtype)


# ------------------------------------------------------------- schema and tables


def test_schema_matches_published_numbers() -> None:
    # Spot checks against the numbers Tesla publishes; the whole enum is 0..259.
    published = {
        "Unknown": 0, "ChargeState": 2, "VehicleSpeed": 4, "Odometer": 5, "Soc": 8,
        "Gear": 10, "Location": 21, "GpsHeading": 23, "RatedRange": 32,
        "ACChargingPower": 37, "ChargeLimitSoc": 38, "BatteryLevel": 42,
        "TimeToFullCharge": 43, "ChargeAmps": 49, "DoorState": 58, "Locked": 59,
        "VehicleName": 64, "SentryMode": 65, "Version": 68, "TpmsPressureRr": 72,
        "InsideTemp": 85, "OutsideTemp": 86, "Deprecated_2": 100, "CarType": 113,
        "ChargePortLatch": 118, "EnergyRemaining": 158, "Deprecated_1": 162,
        "DestinationName": 163, "Experimental_15": 178, "DetailedChargeState": 179,
        "ChargerVoltage": 184, "FastChargerType": 193, "HvacPower": 201,
        "SoftwareUpdateVersion": 220, "LocatedAtHome": 229, "LightsTurnSignal": 240,
        "Deprecated_3": 257, "SelfDrivingMilesSinceReset": 259,
    }  # fmt: skip
    for name, number in published.items():
        assert FIELD_NAMES[number] == name
    assert sorted(FIELD_NAMES) == list(range(260))
    value_members = vehicle_data_pb2.Value.DESCRIPTOR.oneofs_by_name["value"].fields
    numbers = sorted(member.number for member in value_members)
    assert numbers == [n for n in range(1, 55) if n != 20]
    assert vehicle_data_pb2.Payload.DESCRIPTOR.full_name == "telemetry.vehicle_data.Payload"
    assert (
        vehicle_connectivity_pb2.VehicleConnectivity.DESCRIPTOR.fields_by_name[
            "network_interface"
        ].number
        == 5
    )


def test_field_kind_table_names_real_fields() -> None:
    assert set(FIELD_KINDS) <= set(FIELD_NAMES.values())
    others = {name for name in FIELD_NAMES.values() if field_kind(name) is FieldKind.OTHER}
    placeholders = {n for n in others if n.startswith(("Experimental_", "Deprecated_"))}
    # Only placeholders and fields Tesla documents without a usable type.
    assert others - placeholders == {"Unknown", "RouteLastUpdated", "ScheduledDepartureTime"}
    for name, kind in FIELD_KINDS.items():
        assert (kind is FieldKind.ENUM) == bool(enum_options(name)), name
    assert enum_options("Gear") == ("Unknown", "Invalid", "P", "R", "N", "D", "SNA")
    assert enum_options("BatteryLevel") == ()


# ------------------------------------------------------------------ gen-proto


def _gen_proto(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-proto"), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_generated_code_matches_proto_files() -> None:
    result = _gen_proto("--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_gen_proto_check_detects_drift(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    generated = Path("src", "gridmate", "vehicles", "telemetry", "proto")
    shutil.copytree(ROOT / generated, tmp_path / generated)
    assert _gen_proto("--check", "--root", str(tmp_path)).returncode == 0

    proto = tmp_path / "proto" / "vehicle_connectivity.proto"
    proto.write_text(
        proto.read_text().replace(
            "string network_interface = 5;", "string network_interface = 5;\n  string extra = 6;"
        )
    )
    (tmp_path / generated / "stale_pb2.py").write_text("")
    result = _gen_proto("--check", "--root", str(tmp_path))
    assert result.returncode == 1
    assert "vehicle_connectivity_pb2.py" in result.stdout
    assert "stale_pb2.py" in result.stdout
    assert "vehicle_alert_pb2.py" not in result.stdout

    assert _gen_proto("--root", str(tmp_path)).returncode == 0
    assert not (tmp_path / generated / "stale_pb2.py").exists()
    assert _gen_proto("--check", "--root", str(tmp_path)).returncode == 0
