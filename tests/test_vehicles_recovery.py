"""The vehicles hub after trouble: log floods, failed Kafka starts, restarts, readiness."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import logging
import re
import socket
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from gridmate.homeassistant.view import HomeAssistantView
from gridmate.runtime.backoff import Backoff
from gridmate.runtime.clock import SystemClock
from gridmate.runtime.logs import LibraryFloodFilter, configure_logging
from gridmate.runtime.settings import MqttSettings
from gridmate.sim.brokers import (
    TANSU_FAST_GROUP_CONSUMER_CONFIG,
    create_kafka_topics,
    kafka_broker,
    mosquitto_broker,
)
from gridmate.sim.fleet_telemetry import sample_vin, telemetry_record
from gridmate.vehicles.homeassistant.discovery import Topics
from gridmate.vehicles.homeassistant.link import MqttLink
from gridmate.vehicles.hub import Hub
from gridmate.vehicles.settings import KafkaSettings, VehiclesSettings
from gridmate.vehicles.telemetry.kafka import bootstrap_addresses, consumer_options, topic_names


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    configure_logging("info", "text", stream)
    try:
        yield stream
    finally:
        logging.getLogger().handlers.clear()


def test_a_kafka_error_loop_logs_one_line_per_message(log_stream):
    # What aiokafka logs while its broker restarts, dozens of times a second.
    client = logging.getLogger("aiokafka")
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    for attempt in range(500):
        client.error("Unable connect to node with id %s: %s", 1, f"[Errno 111] attempt {attempt}")
        coordinator.error("Group Coordinator Request failed: %s", "NodeNotReadyError")
    logging.getLogger("gridmate.vehicles.hub").error("ours are not filtered here")
    logging.getLogger("gridmate.vehicles.hub").error("ours are not filtered here")
    lines = log_stream.getvalue().splitlines()
    assert sum("Unable connect to node" in line for line in lines) == 1
    assert sum("Group Coordinator Request failed" in line for line in lines) == 1
    assert sum("ours are not filtered here" in line for line in lines) == 2
    assert "attempt 0" in log_stream.getvalue()


def test_the_flood_filter_reports_what_it_dropped_once_per_interval():
    now = [100.0]
    flood = LibraryFloodFilter(("aiokafka",), interval=10.0, monotonic=lambda: now[0])

    def record(name: str, message: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, message, ("x",), None)

    first = record("aiokafka.conn", "Unable connect to %s")
    assert flood.filter(first)
    assert not hasattr(first, "fields")
    for _ in range(7):
        assert not flood.filter(record("aiokafka.conn", "Unable connect to %s"))
    # Debugging shows everything.
    assert flood.filter(record("aiokafka.conn", "Unable connect to %s", logging.DEBUG))
    # Another message, another logger or a name that only starts alike pass.
    assert flood.filter(record("aiokafka.conn", "Other %s"))
    assert flood.filter(record("aiokafka.fetcher", "Unable connect to %s"))
    assert flood.filter(record("aiokafkax", "Unable connect to %s"))
    now[0] += 9.9
    assert not flood.filter(record("aiokafka.conn", "Unable connect to %s"))
    now[0] += 0.2
    later = record("aiokafka.conn", "Unable connect to %s")
    assert flood.filter(later)
    assert later.fields == {"similar_since_last": 8}


# ---------------------------------------------------------------- Kafka and MQTT


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _settings(bootstrap: str, mqtt_host: str, mqtt_port: int, name: str, **kafka):
    return VehiclesSettings(
        kafka={
            "bootstrap_servers": bootstrap,
            "namespace": name,
            "group_id": f"{name}-group",
            "commit_interval": 0.2,
            "session_timeout": TANSU_FAST_GROUP_CONSUMER_CONFIG["session_timeout_ms"] / 1000,
            "heartbeat_interval": TANSU_FAST_GROUP_CONSUMER_CONFIG["heartbeat_interval_ms"] / 1000,
            **kafka,
        },
        mqtt={"host": mqtt_host, "port": mqtt_port},
        homeassistant={"base_topic": f"{name}gm", "discovery_prefix": f"{name}ha"},
        metrics={"enable": False},
    )


@contextlib.asynccontextmanager
async def running(settings: VehiclesSettings, statuses: list[str] | None = None):
    stop = asyncio.Event()
    hub = Hub(
        settings,
        clock=SystemClock(),
        registry=CollectorRegistry(),
        stop=stop,
        status=statuses.append if statuses is not None else None,
    )
    task = asyncio.create_task(hub.run())
    try:
        yield hub
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def test_static_membership_is_on_by_default_with_an_id_per_host():
    settings = KafkaSettings(namespace="tesla_telemetry")
    options = consumer_options(settings)
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())
    assert options["group_instance_id"] == f"gridmate-vehicles-{host}"
    assert options["session_timeout_ms"] == 10_000
    assert options["heartbeat_interval_ms"] == 3_000
    explicit = KafkaSettings(namespace="t", group_instance_id="garage-pi")
    assert consumer_options(explicit)["group_instance_id"] == "garage-pi"
    dynamic = KafkaSettings(namespace="t", static_membership=False, group_instance_id="x")
    assert consumer_options(dynamic)["group_instance_id"] is None
    with pytest.raises(ValueError, match="heartbeat_interval"):
        KafkaSettings(namespace="t", session_timeout=3, heartbeat_interval=3)


@pytest.mark.services
async def test_a_kafka_consumer_that_fails_to_start_is_closed(mqtt_broker, unique_name):
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context["message"]))
    try:
        settings = _settings(
            f"127.0.0.1:{_free_port()}", mqtt_broker.host, mqtt_broker.port, unique_name
        )
        async with running(settings) as hub:
            while hub.last_kafka_error is None:
                await asyncio.sleep(0.05)
            assert hub.health_kafka() is not None
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert not [message for message in reported if "Unclosed AIOKafkaConsumer" in message]


@pytest.mark.services
async def test_ready_only_once_partitions_are_assigned(kafka_bootstrap, mqtt_broker, unique_name):
    await create_kafka_topics(kafka_bootstrap, dict.fromkeys(topic_names(unique_name), 2))
    settings = _settings(
        kafka_bootstrap, mqtt_broker.host, mqtt_broker.port, unique_name, static_membership=False
    )
    statuses: list[str] = []
    async with running(settings, statuses) as hub:
        await asyncio.wait_for(hub.ready.wait(), 30)
        # Every partition of the four topics, the moment READY is signalled.
        assert len(hub.assignment) == 8
        assert hub.health_kafka() is None
    assert any(text.startswith("Waiting for Kafka partitions") for text in statuses)


@pytest.mark.services
async def test_mqtt_reconnects_once_the_broker_answers_again():
    port = _free_port()
    stop = asyncio.Event()
    link = MqttLink(
        MqttSettings(host="127.0.0.1", port=port),
        Topics("recovery", "recoveryha", "gridmate"),
        stop=stop,
        # After a long outage: the next attempt is a long wait away.
        backoff=Backoff(initial=120, cap=120, jitter=False),
    )
    task = asyncio.create_task(link.run())
    try:
        while link.last_error is None:
            await asyncio.sleep(0.05)
        async with mosquitto_broker(port=port):
            await asyncio.wait_for(link.connected.wait(), 15)
            stop.set()
            await asyncio.wait_for(task, 15)
    finally:
        stop.set()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.mark.services
async def test_a_static_member_restarts_and_misses_nothing(
    kafka_bootstrap, mqtt_broker, unique_name
):
    # tansu answers a static member's rejoin with a full rebalance rather than its old
    # partitions (KIP-345 brokers hand them back at once); what every broker must give
    # is a restart that loses nothing.
    await create_kafka_topics(kafka_bootstrap, dict.fromkeys(topic_names(unique_name), 2))
    settings = _settings(
        kafka_bootstrap,
        mqtt_broker.host,
        mqtt_broker.port,
        unique_name,
        static_membership=True,
        group_instance_id=f"{unique_name}-a",
    )
    vin = sample_vin(40)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
    await producer.start()
    now = datetime.now(UTC).replace(microsecond=0)

    async def send(level: float, minute: int) -> None:
        record = telemetry_record(
            unique_name, vin, now + timedelta(minutes=minute), {"BatteryLevel": level}
        )
        await producer.send_and_wait(
            record.topic, record.value, key=record.key, headers=record.headers
        )

    view = HomeAssistantView(
        mqtt_broker.host,
        mqtt_broker.port,
        discovery_prefix=f"{unique_name}ha",
        base=f"{unique_name}gm",
    )
    try:
        async with view.running():
            async with running(settings) as hub:
                await asyncio.wait_for(hub.ready.wait(), 60)
                await send(50.0, 0)
                await view.wait_for(lambda _e: view.value(vin, "Battery level") == 50.0)
            # Down: the car goes on reporting.
            await send(49.0, 1)
            await send(48.0, 2)
            async with running(settings) as hub:
                await view.wait_for(lambda _e: view.value(vin, "Battery level") == 48.0, within=60)
                assert len(hub.assignment) == 8
    finally:
        await producer.stop()


@pytest.mark.services
async def test_a_dead_kafka_broker_floods_nothing_and_the_hub_still_stops_cleanly(
    mqtt_broker, unique_name, log_stream
):
    raw: list[logging.LogRecord] = []

    class Everything(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.name.startswith("aiokafka") and record.levelno >= logging.WARNING:
                raw.append(record)

    logging.getLogger().addHandler(Everything())
    async with kafka_broker() as bootstrap:
        await create_kafka_topics(bootstrap, dict.fromkeys(topic_names(unique_name), 2))
        settings = _settings(
            bootstrap, mqtt_broker.host, mqtt_broker.port, unique_name, static_membership=False
        )
        stop = asyncio.Event()
        hub = Hub(settings, clock=SystemClock(), registry=CollectorRegistry(), stop=stop)
        task = asyncio.create_task(hub.run())
        await asyncio.wait_for(hub.ready.wait(), 60)
    # The broker is gone: aiokafka retries (and logs) every 100 ms or so.
    try:
        async with asyncio.timeout(60):
            while len(raw) < 200:
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        # Stopping while aiokafka waits to retry a fetch must not end in CancelledError.
        await asyncio.wait_for(task, 30)
    written = [line for line in log_stream.getvalue().splitlines() if " aiokafka" in line]
    assert written, "the first line of each message is written"
    assert len(written) <= len(raw) / 10, (len(written), len(raw))


def test_bootstrap_servers_are_probed_as_host_and_port():
    settings = KafkaSettings(namespace="t", bootstrap_servers="kafka1:9093, kafka2 ,[::1]:9094,")
    assert bootstrap_addresses(settings) == [("kafka1", 9093), ("kafka2", 9092), ("::1", 9094)]
