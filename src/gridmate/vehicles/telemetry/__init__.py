"""Tesla Fleet Telemetry, gridmate's first vehicle data source: from Kafka to the state.

``decode_record`` turns one Kafka record (protobuf or JSON) into a ``TelemetryRecord``,
``AlertsRecord``, ``ErrorsRecord`` or ``ConnectivityRecord``; the schema lives in
proto/ at the repository root and its generated code in ``.proto``. ``kafka`` builds
the consumer, ``ingest`` takes each consumed record through decoding and sanity
checks, and ``source`` applies it to the state.
"""

from .decode import (
    DEFAULT_MAX_SIZE,
    FIELD_KINDS,
    FIELD_NAMES,
    FieldKind,
    MalformedRecord,
    decode_record,
    enum_options,
    field_kind,
    record_type,
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
    "Alert",
    "AlertsRecord",
    "ConnectivityRecord",
    "ConnectivityStatus",
    "Datum",
    "DatumValue",
    "Doors",
    "ErrorsRecord",
    "FieldKind",
    "Location",
    "MalformedRecord",
    "Record",
    "RecordType",
    "TelemetryRecord",
    "TimeOfDay",
    "TireLocation",
    "VehicleError",
    "decode_record",
    "enum_options",
    "field_kind",
    "record_type",
]
