"""Decoded Fleet Telemetry records, independent of the wire format they came in.

Nothing here refers to protobuf: the rest of the vehicles hub consumes these objects
whether the server wrote protobuf or JSON, and tests can build them directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class RecordType(StrEnum):
    """The server's txtype, also the suffix of the Kafka topic."""

    V = "V"
    ALERTS = "alerts"
    ERRORS = "errors"
    CONNECTIVITY = "connectivity"


@dataclass(frozen=True, slots=True)
class Location:
    latitude: float
    longitude: float


@dataclass(frozen=True, slots=True)
class Doors:
    """Which doors are open.

    Firmware before 2024.44.32 reports passenger front and driver rear swapped (Tesla's
    documentation); the car's firmware is not known here, so it is passed on as sent.
    """

    driver_front: bool
    driver_rear: bool
    passenger_front: bool
    passenger_rear: bool
    trunk_front: bool
    trunk_rear: bool


@dataclass(frozen=True, slots=True)
class TireLocation:
    """Which tyres a TPMS warning applies to."""

    front_left: bool
    front_right: bool
    rear_left: bool
    rear_right: bool
    semi_middle_axle_left_2: bool
    semi_middle_axle_right_2: bool
    semi_rear_axle_left: bool
    semi_rear_axle_right: bool
    semi_rear_axle_left_2: bool
    semi_rear_axle_right_2: bool


@dataclass(frozen=True, slots=True)
class TimeOfDay:
    """A wall-clock time as the car reports it; not validated, so not datetime.time."""

    hour: int
    minute: int
    second: int

    def __str__(self) -> str:
        return f"{self.hour:02d}:{self.minute:02d}:{self.second:02d}"


DatumValue = float | int | str | bool | Location | Doors | TireLocation | TimeOfDay | None


@dataclass(frozen=True, slots=True)
class Datum:
    """One signal of a V record.

    ``field`` is the upstream Field enum name (``"BatteryLevel"``); ``value`` is None
    when the car sent the key without a value or flagged it invalid. ``invalid`` means
    the car said the signal is not available right now (often when it goes to sleep),
    which is not the same as the signal having changed to "nothing".
    Enum values are their names without the enum's prefix (``"D"``, ``"Armed"``).
    """

    field: str
    value: DatumValue
    invalid: bool = False


@dataclass(frozen=True, slots=True)
class TelemetryRecord:
    """A V record: the signals a vehicle reported at ``created_at`` (vehicle clock).

    ``is_resend`` records repeat every signal not yet acknowledged and may be older
    than data already seen. ``unknown_fields`` counts parts of the message the schema
    does not know (newer firmware or server); ``unknown_keys`` lists the Field numbers
    among them, whose datums were dropped because they have no name.
    ``uncoercible`` names fields whose value arrived as a string that does not parse
    as the field's type; those datums are marked invalid.
    ``received_at`` is the server's receive time from the Kafka headers, if present;
    ``created_at`` falls back to it for a message that carries no time of its own.
    ``claimed_vin`` is the VIN inside the message when it differs from ``vin`` (the
    certificate's, from the record key or headers); every record type has both.
    """

    vin: str
    created_at: datetime
    is_resend: bool
    datums: tuple[Datum, ...]
    unknown_fields: int = 0
    unknown_keys: tuple[int, ...] = ()
    uncoercible: tuple[str, ...] = ()
    received_at: datetime | None = None
    claimed_vin: str | None = None

    @property
    def record_type(self) -> RecordType:
        return RecordType.V


@dataclass(frozen=True, slots=True)
class Alert:
    """A vehicle alert; active while ``ended_at`` is None."""

    name: str
    audiences: tuple[str, ...]
    started_at: datetime | None
    ended_at: datetime | None

    @property
    def active(self) -> bool:
        return self.ended_at is None


@dataclass(frozen=True, slots=True)
class AlertsRecord:
    vin: str
    created_at: datetime
    alerts: tuple[Alert, ...]
    unknown_fields: int = 0
    received_at: datetime | None = None
    claimed_vin: str | None = None

    @property
    def record_type(self) -> RecordType:
        return RecordType.ALERTS


@dataclass(frozen=True, slots=True)
class VehicleError:
    """One error a vehicle reported; ``tags`` are sorted (key, value) pairs."""

    name: str
    body: str
    tags: tuple[tuple[str, str], ...]
    created_at: datetime | None

    def tag(self, key: str) -> str | None:
        for name, value in self.tags:
            if name == key:
                return value
        return None


@dataclass(frozen=True, slots=True)
class ErrorsRecord:
    vin: str
    created_at: datetime
    errors: tuple[VehicleError, ...]
    unknown_fields: int = 0
    received_at: datetime | None = None
    claimed_vin: str | None = None

    @property
    def record_type(self) -> RecordType:
        return RecordType.ERRORS


class ConnectivityStatus(StrEnum):
    UNKNOWN = "UNKNOWN"
    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"


@dataclass(frozen=True, slots=True)
class ConnectivityRecord:
    """The server opened or closed a vehicle's connection ``connection_id``.

    Connections of one vehicle can overlap, so online state is best tracked as the set
    of its open connection ids rather than from the latest status alone.
    """

    vin: str
    connection_id: str
    status: ConnectivityStatus
    network_interface: str
    created_at: datetime
    unknown_fields: int = 0
    received_at: datetime | None = None
    claimed_vin: str | None = None

    @property
    def record_type(self) -> RecordType:
        return RecordType.CONNECTIVITY


Record = TelemetryRecord | AlertsRecord | ErrorsRecord | ConnectivityRecord
