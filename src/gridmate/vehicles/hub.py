"""The vehicles hub: Fleet Telemetry records from Kafka to Home Assistant over MQTT.

One loop consumes the topics, applies each record to the state and, between fetches,
publishes what changed. Delivery is at least once end to end: a record's offset is
committed only after the broker acknowledged (QoS 1) every MQTT message it caused. If
the MQTT broker goes away the partitions are paused, so nothing more is fetched and
nothing is committed past what was delivered, and consumption resumes when it is back.
A restart or a rebalance replays from the last commit, which the per-field ordering
of the state makes harmless.

The state is rebuilt from the broker's retained state documents whenever partitions
are assigned (at start, and when instances of a consumer group rebalance), so that
the first record of a parked car does not blank the fields it did not mention.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gridmate.runtime.backoff import Backoff, reconnecting, tcp_answers
from gridmate.runtime.clock import Clock
from gridmate.runtime.logs import get_logger
from gridmate.vehicles.arbitration import FLEET_TELEMETRY, GRIDMATE, RankedArbiter
from gridmate.vehicles.catalogue import invalid_policies
from gridmate.vehicles.homeassistant.controls import (
    VehicleControls,
    command_filter,
    enabled_controls,
)
from gridmate.vehicles.homeassistant.discovery import SnapshotError, Topics, restore_fields
from gridmate.vehicles.homeassistant.link import MqttLink, MqttUnavailable
from gridmate.vehicles.homeassistant.publisher import Publisher
from gridmate.vehicles.settings import KafkaSettings, VehiclesSettings
from gridmate.vehicles.sources.manager import DATA_SOURCE_FIELD, build_source_manager
from gridmate.vehicles.state import Applied, FieldValue, Outcome, StateStore
from gridmate.vehicles.telemetry.ingest import RateLimitedLog, RecordIngest
from gridmate.vehicles.telemetry.kafka import bootstrap_addresses, make_consumer, topic_names
from gridmate.vehicles.telemetry.source import MAPPED_EXTRA_KEYS, FleetTelemetrySource

log = get_logger("vehicles.hub")

_FETCH_TIMEOUT_MS = 200
DELIVERY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0)  # fmt: skip
_MAX_RECORDS = 5000
_EXPIRE_EVERY = 5.0
_LOG_EVERY = 10.0
# Restored state may come from an instance whose clock runs somewhat ahead; only a
# time no clock gets wrong by is clearly a pinned field.
_RESTORED_FUTURE_LIMIT = 86400.0


async def _close(consumer: Any) -> None:
    """Stop a consumer. With the broker away, aiokafka's stop() cancels a fetch that
    waits to retry and re-raises that task's CancelledError; only a cancellation of
    the caller itself is passed on."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


def unpin_future(fields: dict[str, FieldValue], now: float, max_skew: float) -> int:
    """Retime restored fields dated more than ``max_skew`` after ``now`` to ``now``.

    A state published before gridmate bounded record times may hold a field dated
    centuries ahead; kept as is, it would hide every later value.
    """
    unpinned = 0
    for value in fields.values():
        if value.observed_at - now > max_skew:
            value.observed_at = now
            unpinned += 1
    return unpinned


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.publishes = Counter(
            "gridmate_vehicles_mqtt_publishes",
            "MQTT messages published and acknowledged.",
            registry=registry,
        )
        self.publish_failures = Counter(
            "gridmate_vehicles_mqtt_publish_failures",
            "Batches that could not be delivered to the MQTT broker (retried).",
            registry=registry,
        )
        self.lag = Gauge(
            "gridmate_vehicles_consumer_lag",
            "Records in assigned partitions not yet processed (from the last fetch).",
            registry=registry,
        )
        self.vehicles = Gauge(
            "gridmate_vehicles_known", "Vehicles in the state.", registry=registry
        )
        self.assigned = Gauge(
            "gridmate_vehicles_assigned_partitions",
            "1 for each Kafka partition this instance consumes now (instances of a consumer "
            "group split them).",
            ["topic", "partition"],
            registry=registry,
        )
        self.delivery = Histogram(
            "gridmate_vehicles_delivery_seconds",
            "From fetching records from Kafka to the broker acknowledging the MQTT messages "
            "they caused: the latency the hub adds (one observation per delivery, timed "
            "from its oldest fetch).",
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.hub._partitions_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.hub._partitions_assigned(set(assigned))


class Hub:
    def __init__(
        self,
        settings: VehiclesSettings,
        *,
        clock: Clock,
        registry: CollectorRegistry,
        stop: asyncio.Event,
        status: Callable[[str], None] | None = None,
        fleet_api: Any = None,
        notifier: Any = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.stop = stop
        self._status = status or (lambda _text: None)
        ha = settings.homeassistant
        self.topics = Topics(ha.base_topic, ha.discovery_prefix, ha.node_name)
        self.store = StateStore(invalid_policies(settings.field_policies), arbiter=RankedArbiter())
        self.source = FleetTelemetrySource(
            self.store,
            online_timeout=settings.online_timeout,
            stale_connection_after=settings.stale_connection_after,
        )
        # Car controls need a command path (the settings refuse controls without one).
        controls = (
            enabled_controls(climate=settings.controls.climate)
            if settings.controls.enable and fleet_api is not None
            else ()
        )
        self.publisher = Publisher(
            self.store,
            self.topics,
            settings.vehicles,
            now=lambda: clock.now().timestamp(),
            announce_all=settings.homeassistant.announce_all_entities,
            configuration_url=settings.homeassistant.configuration_url,
            support_url=settings.homeassistant.support_url,
            notifications=notifier is not None,
            model_of=self._model_of,
            controls=controls,
        )
        self.controls: VehicleControls | None = None
        if controls:
            self.controls = VehicleControls(
                fleet_api,
                self.store,
                ha.base_topic,
                clock=clock,
                on_change=self._controls_changed,
                wake_vins=settings.controls.wake_vins,
                enabled=controls,
                after_command=self._command_done,
            )
        if notifier is not None:
            notifier.add_listener(self._notification)
        self._mqtt_stop = asyncio.Event()
        self.mqtt = MqttLink(
            settings.mqtt,
            self.topics,
            stop=self._mqtt_stop,
            on_homeassistant_online=self._homeassistant_online,
            on_reconnected=self.publisher.republish_all,
            command_topics=[command_filter(ha.base_topic)] if self.controls else [],
            on_command=self.controls.handle if self.controls else None,
        )
        self.metrics = _Metrics(registry)
        self.metrics.vehicles.set_function(lambda: len(self.store))
        self._kafka_up = asyncio.Event()
        self._assigned = asyncio.Event()
        """Partitions were assigned in the current Kafka session (possibly none)."""
        self.assignment: frozenset[TopicPartition] = frozenset()
        """The Kafka partitions this instance consumes now."""
        self.ready = asyncio.Event()
        self.last_kafka_error: str | None = None
        self._consumer: Any = None
        self._processed: dict[TopicPartition, int] = {}
        # With Fleet Telemetry as the only source, no arbitration runs; the cars whose
        # "Data source" entity already says Fleet Telemetry.
        self._fleet_only_named: set[str] = set()
        self._delivered: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._needs_seed = True
        self._paused = False
        self._work = asyncio.Lock()
        self._last_expire = 0.0
        self._last_commit = time.monotonic()
        self._last_fetch = time.monotonic()
        self._fetched_since: float | None = None  # oldest fetch not yet delivered
        self._background: set[asyncio.Task[None]] = set()
        self._log = RateLimitedLog(_LOG_EVERY)
        self.ingest = RecordIngest(
            self.source,
            namespace=settings.kafka.namespace if settings.kafka else "",
            max_record_bytes=settings.kafka.max_record_bytes if settings.kafka else 0,
            max_clock_skew=settings.max_clock_skew,
            now=clock.now,
            registry=registry,
            warnings=self._log,
        )
        self._topic_names = topic_names(settings.kafka.namespace) if settings.kafka else []
        self._changed = asyncio.Event()
        # TeslaMate, Tesla API polling, and which source speaks for each vehicle.
        self.sources = build_source_manager(
            settings,
            self.store,
            clock=clock,
            registry=registry,
            on_change=self._source_changed,
            fleet_api=fleet_api,
            notifier=notifier,
            fleet_telemetry=settings.kafka is not None,
        )

    @property
    def _kafka(self) -> KafkaSettings:
        assert self.settings.kafka is not None, "Kafka is not configured"
        return self.settings.kafka

    # ------------------------------------------------------------ running

    async def run(self) -> None:
        mqtt = asyncio.create_task(self.mqtt.run(), name="vehicles.mqtt")
        readiness = asyncio.create_task(self._await_ready(), name="vehicles.ready")
        sources = None
        if self.sources is not None:
            sources = asyncio.create_task(self.sources.run(self.stop), name="vehicles.sources")
            if self.settings.kafka is not None:
                # Not tied to the Kafka loop: TeslaMate must reach Home Assistant while
                # Kafka rebalances or is down.
                self._spawn(self._deliver_source_changes(), "vehicles.deliver")
        try:
            if self.settings.kafka is None:
                await self._serve_without_kafka()
            else:
                await reconnecting(
                    self._kafka_session,
                    peer=f"Kafka {self._kafka.bootstrap_servers}",
                    stop=self.stop,
                    retry_on=(KafkaError, OSError, TimeoutError),
                    on_failure=self._kafka_failed,
                    probe=self._kafka_answers,
                )
        finally:
            if self.controls is not None:
                await self.controls.close()
            if sources is not None:
                if not self.stop.is_set():
                    sources.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sources
                with contextlib.suppress(MqttUnavailable):
                    await self._deliver()
            self._mqtt_stop.set()
            readiness.cancel()
            for task in (*self._background, readiness):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(readiness, *self._background, return_exceptions=True)
            await mqtt

    async def _await_ready(self) -> None:
        # READY means serving: Kafka partitions assigned (possibly none, when the group
        # has more instances than partitions) and Home Assistant's broker connected.
        if self.settings.kafka is not None:
            await self._assigned.wait()
        await self.mqtt.connected.wait()
        self.ready.set()

    async def _kafka_answers(self) -> bool:
        for host, port in bootstrap_addresses(self._kafka):
            if await tcp_answers(host, port):
                return True
        return False

    def _kafka_failed(self, error: BaseException) -> None:
        self.last_kafka_error = f"{type(error).__name__}: {error}"

    def health_kafka(self) -> str | None:
        if self.settings.kafka is None:
            return None
        if not self._kafka_up.is_set():
            return f"not connected to Kafka ({self.last_kafka_error or 'connecting'})"
        if not self._assigned.is_set() and not self.ready.is_set():
            return f"waiting for Kafka partitions (consumer group {self._kafka.group_id})"
        silent = time.monotonic() - self._last_fetch
        if silent > 60:
            return f"no answer from Kafka for {silent:.0f}s"
        return None

    def health_mqtt(self) -> str | None:
        if self.mqtt.connected.is_set():
            return None
        return f"not connected to the MQTT broker ({self.mqtt.last_error or 'connecting'})"

    def _source_changed(self, applied: Applied) -> None:
        self.publisher.mark(applied)
        self._changed.set()

    def _spawn(self, work: Any, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _deliver_source_changes(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 1.0)
            self._changed.clear()
            if self._needs_seed and self.mqtt.connected.is_set():
                # Restore before publishing, or partial documents would replace the
                # retained ones; the Kafka side restores again when it is assigned.
                async with self._work:
                    await self._seed()
            if self.publisher.pending and not self._needs_seed:
                with contextlib.suppress(MqttUnavailable):
                    await self._deliver()

    async def _serve_without_kafka(self) -> None:
        """No Fleet Telemetry: restore the state, then publish what the other sources change."""
        while not self.stop.is_set():
            if self._needs_seed:
                async with self._work:
                    seeded = await self._seed()
                if not seeded:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.mqtt.connected.wait(), 1.0)
                    continue
            self._changed.clear()
            if self.publisher.pending and not await self._deliver():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.mqtt.connected.wait(), 1.0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 1.0)

    async def _kafka_session(self, backoff: Backoff) -> None:
        consumer = make_consumer(self._kafka)
        try:
            await consumer.start()
        except BaseException:
            # A consumer that failed to start still holds a client and its connections.
            with contextlib.suppress(KafkaError, OSError):
                await _close(consumer)
            raise
        self._consumer = consumer
        try:
            consumer.subscribe(self._topic_names, listener=_Rebalance(self))
            self._kafka_up.set()
            self.last_kafka_error = None
            log.info(
                "consuming",
                topics=",".join(self._topic_names),
                group=self._kafka.group_id,
                instance=self._kafka.instance_id or "dynamic",
            )
            self._status(f"Waiting for Kafka partitions (consumer group {self._kafka.group_id})")
            await self._consume(consumer, backoff)
        finally:
            self._kafka_up.clear()
            self._assigned.clear()
            self._show_assignment(frozenset())
            with contextlib.suppress(KafkaError, MqttUnavailable, OSError):
                await self._deliver()
                await self._commit(consumer)
            self._consumer = None
            self._processed.clear()
            self._delivered.clear()
            self._committed.clear()
            self._needs_seed = True
            with contextlib.suppress(KafkaError, OSError):
                await _close(consumer)

    async def _consume(self, consumer: Any, backoff: Backoff) -> None:
        while not self.stop.is_set():
            if self._undelivered() and not await self._deliver():
                # Home Assistant's broker is away: fetch nothing more, but keep polling
                # (with every partition paused) so the group keeps this member.
                self._pause(consumer)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.mqtt.connected.wait(), 1.0)
                await consumer.getmany(timeout_ms=0)
                continue
            self._resume(consumer)
            batches = await consumer.getmany(timeout_ms=_FETCH_TIMEOUT_MS, max_records=_MAX_RECORDS)
            self._last_fetch = time.monotonic()
            if batches and self._fetched_since is None:
                self._fetched_since = self._last_fetch
            backoff.reset()
            async with self._work:
                if batches and self._needs_seed and not await self._seed():
                    for partition, records in batches.items():
                        consumer.seek(partition, records[0].offset)
                    continue
                for partition, records in batches.items():
                    self._process(partition, records)
                self._expire()
            self._update_lag(consumer)
            if time.monotonic() - self._last_commit >= self._kafka.commit_interval:
                await self._commit(consumer)

    def _process(self, partition: TopicPartition, records: list[Any]) -> None:
        ingest, mark = self.ingest, self.publisher.mark
        name_source = self.sources is None
        for message in records:
            applied = ingest(message)
            if applied is None:
                continue
            if name_source and applied.vin not in self._fleet_only_named:
                self._name_fleet_telemetry_source(applied)
            mark(applied)
        self._processed[partition] = records[-1].offset + 1

    def _name_fleet_telemetry_source(self, applied: Applied) -> None:
        self._fleet_only_named.add(applied.vin)
        now = self.clock.now().timestamp()
        outcome = self.store.update(applied.vin, DATA_SOURCE_FIELD, FLEET_TELEMETRY, now, GRIDMATE)
        if outcome is Outcome.CHANGED:
            applied.changed.append(DATA_SOURCE_FIELD)

    def _expire(self) -> None:
        now = self.clock.now().timestamp()
        if now - self._last_expire < _EXPIRE_EVERY:
            return
        self._last_expire = now
        for applied in self.source.expire(now):
            self.publisher.mark(applied)

    def _undelivered(self) -> bool:
        return self.publisher.pending or self._processed != self._delivered

    async def _deliver(self) -> bool:
        """Publish what is pending; True once everything processed is acknowledged."""
        async with self._work:
            processed = dict(self._processed)
            while self.publisher.pending:
                if not self.mqtt.connected.is_set():
                    return False
                batch = self.publisher.take()
                if not batch.messages:
                    continue
                try:
                    await self.mqtt.publish_many(batch.messages)
                except MqttUnavailable as error:
                    self.publisher.failed(batch)
                    self.metrics.publish_failures.inc()
                    self._log.warning(
                        "publish", "publishing to MQTT failed; will retry", error=str(error)
                    )
                    return False
                self.metrics.publishes.inc(len(batch.messages))
            self._delivered = processed
            if self._fetched_since is not None:
                self.metrics.delivery.observe(time.monotonic() - self._fetched_since)
                self._fetched_since = None
            return True

    async def _commit(self, consumer: Any, only: set[TopicPartition] | None = None) -> None:
        self._last_commit = time.monotonic()
        offsets = {
            partition: offset
            for partition, offset in self._delivered.items()
            if offset > self._committed.get(partition, -1) and (only is None or partition in only)
        }
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (KafkaError, AssertionError, ValueError) as error:
            self._log.warning("commit", "committing offsets failed; will retry", error=repr(error))
            return
        self._committed.update(offsets)

    def _pause(self, consumer: Any) -> None:
        if not self._paused:
            assignment = consumer.assignment()
            consumer.pause(*assignment)
            self._paused = True
            self._status("Waiting for the MQTT broker; Kafka consumption paused")
            log.warning("MQTT broker unavailable; consumption paused", partitions=len(assignment))

    def _resume(self, consumer: Any) -> None:
        if self._paused:
            consumer.resume(*consumer.assignment())
            self._paused = False
            self._status(self._serving_status())
            log.info("MQTT broker back; consumption resumed")

    def _serving_status(self) -> str:
        return f"Serving {len(self.store)} vehicles"

    def _update_lag(self, consumer: Any) -> None:
        lag = 0
        for partition in consumer.assignment():
            highwater = consumer.highwater(partition)
            position = self._processed.get(partition)
            if highwater is not None and position is not None:
                lag += max(0, highwater - position)
        self.metrics.lag.set(lag)

    # ------------------------------------------------------------ state restore

    async def _seed(self) -> bool:
        """Restore the state from the broker's retained documents; False if MQTT is away."""
        if not self.mqtt.connected.is_set():
            return False
        try:
            retained = await self.mqtt.retained_states()
        except MqttUnavailable as error:
            self._log.warning("seed", "cannot read the retained state yet", error=str(error))
            return False
        self.store.clear()
        self.publisher.forget()
        self.source.forget()
        restored = 0
        now = self.clock.now().timestamp()
        for topic, payload in retained.items():
            vin = self.topics.vin_of_state(topic)
            if vin is None or not payload:
                continue
            try:
                fields = restore_fields(payload)
            except SnapshotError as error:
                self._log.warning(
                    "snapshot", "retained state ignored", topic=topic, error=str(error)
                )
                continue
            for key in MAPPED_EXTRA_KEYS.intersection(fields):
                del fields[key]
            unpin_future(fields, now, _RESTORED_FUTURE_LIMIT)
            self.store.seed(vin, fields)
            restored += 1
        self._needs_seed = False
        if self.sources is not None:
            self.sources.restored()
        log.info("state restored from retained messages", vehicles=restored)
        self._status(self._serving_status())
        return True

    async def _partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        consumer = self._consumer
        with contextlib.suppress(MqttUnavailable):
            await self._deliver()
        if consumer is not None:
            await self._commit(consumer, only=revoked)
        async with self._work:
            # Another instance may own these vehicles now; our copy would go stale. The
            # state is restored from the broker at the next assignment.
            self.store.clear()
            self.publisher.forget()
            self.source.forget()
            for partition in revoked:
                self._processed.pop(partition, None)
                self._delivered.pop(partition, None)
                self._committed.pop(partition, None)
            self._needs_seed = True
            self._show_assignment(self.assignment - revoked)
        log.info("partitions revoked", partitions=len(revoked))

    def _show_assignment(self, assignment: frozenset[TopicPartition]) -> None:
        self.assignment = assignment
        self.metrics.assigned.clear()
        for partition in assignment:
            self.metrics.assigned.labels(partition.topic, str(partition.partition)).set(1)

    async def _partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._needs_seed = True
        self._show_assignment(frozenset(assigned))
        self._assigned.set()
        if self.sources is not None:
            # TeslaMate and polling write meanwhile: restore now rather than at the first
            # Fleet Telemetry record, which may be hours away.
            async with self._work:
                await self._seed()
        log.info("partitions assigned", partitions=len(assigned))
        if not self._paused:
            self._status(self._serving_status())
        # Other instances may have left with their last will: say again that we serve.
        await self.mqtt.announce_online()

    # ------------------------------------------------------------ Home Assistant

    def _controls_changed(self, applied: Applied) -> None:
        self.publisher.mark(applied)
        self._changed.set()

    def _command_done(self, vin: str) -> None:
        # A car that polling serves shows a command's effect at its next poll, which
        # may be many minutes away: read it at the next round instead. (Polling reads
        # only cars handed to it; Fleet Telemetry and TeslaMate report changes anyway.)
        sources = getattr(self, "sources", None)
        if sources is not None and sources.polling is not None:
            sources.polling.poll_soon(vin)

    def _model_of(self, vin: str) -> str | None:
        sources = getattr(self, "sources", None)
        teslamate = sources.teslamate if sources is not None else None
        return teslamate.model_of(vin) if teslamate is not None else None

    def _notification(self, event: Any) -> None:
        self.publisher.notification(event)
        self._changed.set()

    def _homeassistant_online(self) -> None:
        task = asyncio.create_task(self._rediscover(), name="vehicles.rediscover")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _rediscover(self) -> None:
        # Home Assistant asks for a random delay so that services do not all answer at once.
        await self.clock.sleep(random.uniform(0, self.settings.homeassistant.birth_delay))
        self.publisher.republish_all()
