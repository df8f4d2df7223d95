"""From a consumed Kafka record to the state: clock skew, the certificate's VIN, counters.

Records are what fleet-telemetry writes (see test_telemetry_decode for the formats),
wrapped in aiokafka's own ``ConsumerRecord``, and go through the hub's
:class:`RecordIngest` into a real :class:`StateStore`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry

from gridmate.sim.fleet_telemetry import KafkaRecord, connectivity_record, telemetry_record
from gridmate.vehicles.hub import unpin_future
from gridmate.vehicles.state import FieldValue, StateStore
from gridmate.vehicles.telemetry.decode import DEFAULT_MAX_SIZE
from gridmate.vehicles.telemetry.ingest import RateLimitedLog, RecordIngest
from gridmate.vehicles.telemetry.source import FleetTelemetrySource

NS = "tesla_telemetry"
VIN = "5YJ3E1EA7KF000001"
OTHER_VIN = "7SAYGDEE9PA000002"
RECEIVED = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
HUB_NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Pipeline:
    """A RecordIngest over a real store, fed aiokafka ConsumerRecords."""

    def __init__(self, max_clock_skew: float = 300.0) -> None:
        self.registry = CollectorRegistry()
        self.store = StateStore()
        self.ingest = RecordIngest(
            FleetTelemetrySource(self.store),
            namespace=NS,
            max_record_bytes=DEFAULT_MAX_SIZE,
            max_clock_skew=max_clock_skew,
            now=lambda: HUB_NOW,
            registry=self.registry,
            warnings=RateLimitedLog(10.0),
        )
        self.offset = 0

    def feed(
        self,
        record: KafkaRecord,
        *,
        kafka_timestamp: datetime | None = None,
        drop_headers: tuple[str, ...] = (),
        key: bytes | str | None = "record",
    ):
        self.offset += 1
        value = record.value
        stamp = int(kafka_timestamp.timestamp() * 1000) if kafka_timestamp else -1
        message = ConsumerRecord(
            topic=record.topic,
            partition=0,
            offset=self.offset,
            timestamp=stamp,
            timestamp_type=0,
            key=record.key if key == "record" else key,
            value=value,
            checksum=None,
            serialized_key_size=len(record.key),
            serialized_value_size=len(value),
            headers=[(k, v) for k, v in record.headers if k not in drop_headers],
        )
        return self.ingest(message)

    def sample(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def value(self, vin: str, key: str):
        state = self.store.get(vin)
        return None if state is None else state.value(key)

    def observed_at(self, vin: str, key: str) -> float:
        state = self.store.get(vin)
        assert state is not None
        return state.fields[key].observed_at


# ---------------------------------------------------------------- clock skew


def test_a_record_from_the_far_future_cannot_pin_a_field():
    pipeline = Pipeline()
    year_2999 = datetime(2999, 1, 1, tzinfo=UTC)
    pipeline.feed(
        telemetry_record(NS, VIN, year_2999, {"BatteryLevel": 91.0}, received_at=RECEIVED)
    )
    assert pipeline.sample("gridmate_vehicles_future_records_total") == 1
    # Kept, as of when the server received it.
    assert pipeline.value(VIN, "battery_level") == 91.0
    assert pipeline.observed_at(VIN, "battery_level") == RECEIVED.timestamp()
    # Every real value that follows is applied.
    for minute, level in ((1, 60.0), (2, 59.0)):
        at = RECEIVED + timedelta(minutes=minute)
        pipeline.feed(telemetry_record(NS, VIN, at, {"BatteryLevel": level}))
        assert pipeline.value(VIN, "battery_level") == level
    assert pipeline.sample("gridmate_vehicles_future_records_total") == 1


def test_a_car_clock_somewhat_ahead_is_trusted_up_to_the_bound():
    pipeline = Pipeline(max_clock_skew=300.0)
    ahead = RECEIVED + timedelta(seconds=299)
    pipeline.feed(telemetry_record(NS, VIN, ahead, {"Odometer": 100.0}, received_at=RECEIVED))
    assert pipeline.observed_at(VIN, "odometer_mi") == ahead.timestamp()
    too_far = RECEIVED + timedelta(seconds=301)
    pipeline.feed(telemetry_record(NS, VIN, too_far, {"Odometer": 101.0}, received_at=RECEIVED))
    assert pipeline.sample("gridmate_vehicles_future_records_total") == 1
    # Retimed to its receipt, older than the trusted value: not applied.
    assert pipeline.value(VIN, "odometer_mi") == 100.0


def test_without_a_receivedat_header_the_kafka_timestamp_bounds_the_time():
    pipeline = Pipeline()
    record = telemetry_record(NS, VIN, datetime(2999, 1, 1, tzinfo=UTC), {"BatteryLevel": 5.0})
    pipeline.feed(record, kafka_timestamp=RECEIVED, drop_headers=("receivedat",))
    assert pipeline.observed_at(VIN, "battery_level") == RECEIVED.timestamp()
    # Neither header nor Kafka timestamp: the hub's own clock.
    pipeline.feed(record, drop_headers=("receivedat",))
    assert pipeline.sample("gridmate_vehicles_future_records_total") == 2
    assert pipeline.observed_at(VIN, "battery_level") == HUB_NOW.timestamp()


def test_connectivity_from_the_future_does_not_keep_a_car_online():
    pipeline = Pipeline()
    future = datetime(2999, 1, 1, tzinfo=UTC)
    record = connectivity_record(NS, VIN, future, "c1", True)
    pipeline.feed(record, kafka_timestamp=RECEIVED, drop_headers=("receivedat",))
    assert pipeline.value(VIN, "online") is True
    pipeline.feed(connectivity_record(NS, VIN, RECEIVED + timedelta(minutes=1), "c1", False))
    assert pipeline.value(VIN, "online") is False


def test_restored_fields_far_ahead_are_retimed_to_now():
    now = HUB_NOW.timestamp()
    fields = {
        "battery_level": FieldValue(80.0, datetime(2999, 1, 1, tzinfo=UTC).timestamp(), "ft"),
        "odometer_mi": FieldValue(10.0, now + 3600, "ft"),  # an hour ahead: kept
        "speed_mph": FieldValue(0.0, now - 60, "ft"),
    }
    assert unpin_future(fields, now, 86400) == 1
    assert fields["battery_level"].observed_at == now
    assert fields["odometer_mi"].observed_at == now + 3600
    assert fields["speed_mph"].observed_at == now - 60


# ---------------------------------------------------------------- the certificate's VIN


def test_connectivity_vin_comes_from_the_record_key_and_a_mismatch_is_counted():
    pipeline = Pipeline()
    # fleet-telemetry before 0.9.1: the message carries what the car put there.
    record = connectivity_record(NS, VIN, RECEIVED, "c1", True, message_vin=OTHER_VIN)
    applied = pipeline.feed(record)
    assert applied is not None and applied.vin == VIN
    assert pipeline.value(VIN, "online") is True
    assert pipeline.store.get(OTHER_VIN) is None
    assert pipeline.sample("gridmate_vehicles_vin_mismatches_total", type="connectivity") == 1
    # A message without a VIN of its own is no mismatch.
    pipeline.feed(connectivity_record(NS, VIN, RECEIVED, "c2", True, message_vin=""))
    assert pipeline.sample("gridmate_vehicles_vin_mismatches_total", type="connectivity") == 1


def test_the_vin_header_stands_in_for_a_missing_key():
    pipeline = Pipeline()
    record = connectivity_record(NS, VIN, RECEIVED, "c1", True, message_vin=OTHER_VIN)
    applied = pipeline.feed(record, key=None)
    assert applied is not None and applied.vin == VIN
    assert pipeline.sample("gridmate_vehicles_vin_mismatches_total", type="connectivity") == 1
    # No key and no header (not fleet-telemetry's records): the message's own VIN.
    applied = pipeline.feed(record, key=None, drop_headers=("vin",))
    assert applied is not None and applied.vin == OTHER_VIN


def test_telemetry_vin_also_follows_the_key():
    pipeline = Pipeline()
    record = telemetry_record(NS, VIN, RECEIVED, {"BatteryLevel": 50.0})
    applied = pipeline.feed(record)
    assert applied is not None and applied.vin == VIN
    assert pipeline.sample("gridmate_vehicles_vin_mismatches_total", type="V") == 0
