"""One Kafka record into the state: decode, sanity checks, apply, count.

The hub hands every consumed record to :class:`RecordIngest`. A record that cannot
be decoded is counted by reason and skipped; a record dated further after its
receipt than ``max_clock_skew`` (a car clock gone wrong) is taken as of its receive
time; a record whose message names another VIN than its certificate is counted and
applied to the certificate's VIN. Warnings are rate-limited: one bad car must not
flood the journal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from gridmate.runtime.logs import get_logger
from gridmate.vehicles.state import Applied
from gridmate.vehicles.telemetry.decode import MalformedRecord, decode_record
from gridmate.vehicles.telemetry.records import Record, RecordType
from gridmate.vehicles.telemetry.source import FleetTelemetrySource, bound_to_receipt

log = get_logger("vehicles.hub")


class RateLimitedLog:
    """At most one line per key per interval; the rest are counted and reported."""

    def __init__(self, interval: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._monotonic = monotonic
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, event: str, **fields: Any) -> None:
        now = self._monotonic()
        if now - self._last.get(key, -self.interval) < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            fields["similar_since_last"] = suppressed
        log.warning(event, **fields)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "gridmate_vehicles_records",
            "Fleet Telemetry records consumed, by record type.",
            ["type"],
            registry=registry,
        )
        self.by_type = {t: self.records.labels(t.value) for t in RecordType}
        self.malformed = Counter(
            "gridmate_vehicles_malformed_records",
            "Records skipped because they could not be decoded, by reason.",
            ["reason"],
            registry=registry,
        )
        self.future = Counter(
            "gridmate_vehicles_future_records",
            "Records timed further after their receipt than max_clock_skew (a car clock "
            "gone wrong); applied as of their receive time.",
            registry=registry,
        )
        self.vin_mismatches = Counter(
            "gridmate_vehicles_vin_mismatches",
            "Records whose message names another VIN than its certificate (the record "
            "key); the certificate's VIN is used.",
            ["type"],
            registry=registry,
        )
        self.stale = Counter(
            "gridmate_vehicles_stale_values",
            "Values older than the state already held (resends, replays), ignored.",
            registry=registry,
        )


def kafka_time(message: Any) -> datetime | None:
    """The record's Kafka timestamp (when fleet-telemetry produced it), if it has one."""
    stamp = getattr(message, "timestamp", None)
    if not isinstance(stamp, int) or isinstance(stamp, bool) or stamp <= 0:
        return None
    try:
        return datetime.fromtimestamp(stamp / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


class RecordIngest:
    """Applies consumed Kafka records (aiokafka ``ConsumerRecord``) to a source."""

    def __init__(
        self,
        source: FleetTelemetrySource,
        *,
        namespace: str,
        max_record_bytes: int,
        max_clock_skew: float,
        now: Callable[[], datetime],
        registry: CollectorRegistry,
        warnings: RateLimitedLog,
    ) -> None:
        self.source = source
        self.namespace = namespace
        self.max_record_bytes = max_record_bytes
        self.max_clock_skew = max_clock_skew
        self._max_skew = timedelta(seconds=max_clock_skew)
        self._now = now
        self.metrics = IngestMetrics(registry)
        self._log = warnings

    def __call__(self, message: Any) -> Applied | None:
        """Apply one record; None if it was skipped (counted and logged)."""
        try:
            record = decode_record(
                message.topic,
                message.headers,
                message.value,
                self.namespace,
                key=message.key,
                max_size=self.max_record_bytes,
            )
        except MalformedRecord as error:
            self._skip(message, error.reason, error.detail)
            return None
        self.metrics.by_type[record.record_type].inc()
        received_at = record.received_at or kafka_time(message) or self._now()
        bounded = bound_to_receipt(record, received_at, self._max_skew)
        if bounded is not record:
            self._future(message, record, received_at)
            record = bounded
        if record.claimed_vin is not None:
            self._vin_mismatch(message, record)
        try:
            applied = self.source.apply(record)
        except Exception as error:  # one unexpected record must not stop the consumer
            self._skip(message, "unprocessable", f"{type(error).__name__}: {error}")
            log.debug("record could not be applied", exc_info=error)
            return None
        if applied.stale:
            self.metrics.stale.inc(applied.stale)
        return applied

    def _skip(self, message: Any, reason: str, detail: str) -> None:
        self.metrics.malformed.labels(reason).inc()
        self._log.warning(
            reason,
            "record skipped",
            reason=reason,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            detail=detail[:200],
        )

    def _future(self, message: Any, record: Record, received_at: datetime) -> None:
        self.metrics.future.inc()
        self._log.warning(
            "future",
            "record timed after its receipt; taken as of its receive time",
            vin=record.vin,
            created_at=record.created_at.isoformat(timespec="seconds"),
            received_at=received_at.isoformat(timespec="seconds"),
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
        )

    def _vin_mismatch(self, message: Any, record: Record) -> None:
        self.metrics.vin_mismatches.labels(record.record_type.value).inc()
        self._log.warning(
            "vin_mismatch",
            "record names another VIN than its certificate; using the certificate's",
            vin=record.vin,
            claimed=record.claimed_vin,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
        )
