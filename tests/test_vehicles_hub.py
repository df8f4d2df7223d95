"""The vehicles hub end to end: a real Kafka-protocol broker, a real Mosquitto, and
what Home Assistant would display, read back through discovery and templates.

Records are built from the upstream schema as fleet-telemetry writes them (protobuf,
or protojson with ``transmit_decoded_records``), keyed by VIN, with its headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gridmate.homeassistant.view import HomeAssistantView
from gridmate.runtime.clock import SystemClock
from gridmate.sim.brokers import (
    TANSU_FAST_GROUP_CONSUMER_CONFIG,
    create_kafka_topics,
    mosquitto_broker,
)
from gridmate.sim.fleet_telemetry import (
    KafkaRecord,
    SimulatedCar,
    alerts_record,
    connectivity_record,
    sample_vin,
    telemetry_record,
)
from gridmate.vehicles.homeassistant.discovery import encode, state_document
from gridmate.vehicles.hub import Hub
from gridmate.vehicles.settings import VehiclesSettings
from gridmate.vehicles.state import StateStore
from gridmate.vehicles.telemetry.kafka import topic_names

pytestmark = pytest.mark.services


@pytest.fixture
def t0() -> datetime:
    """Now, when the test starts: the hub marks a car offline ten minutes after its last
    data, so records must be recent whenever the test runs."""
    return datetime.now(UTC).replace(microsecond=0)


class Rig:
    """Topics on the shared Kafka broker, isolated MQTT topics, hubs and a producer."""

    def __init__(self, bootstrap: str, mqtt_host: str, mqtt_port: int, name: str) -> None:
        self.bootstrap = bootstrap
        self.mqtt_host, self.mqtt_port = mqtt_host, mqtt_port
        self.namespace = name
        self.base = f"{name}gm"
        self.discovery = f"{name}ha"
        self.group = f"{name}-group"
        self.producer: AIOKafkaProducer | None = None

    def settings(self, kafka=None, **extra) -> VehiclesSettings:
        return VehiclesSettings(
            kafka={
                "bootstrap_servers": self.bootstrap,
                "namespace": self.namespace,
                "group_id": self.group,
                "commit_interval": 0.2,
                # tansu does not keep static members' partitions over a restart (see
                # test_vehicles_recovery), and rebalances faster with short sessions.
                "static_membership": False,
                "session_timeout": TANSU_FAST_GROUP_CONSUMER_CONFIG["session_timeout_ms"] / 1000,
                "heartbeat_interval": (
                    TANSU_FAST_GROUP_CONSUMER_CONFIG["heartbeat_interval_ms"] / 1000
                ),
                **(kafka or {}),
            },
            mqtt={"host": self.mqtt_host, "port": self.mqtt_port},
            homeassistant={
                "base_topic": self.base,
                "discovery_prefix": self.discovery,
                "birth_delay": 0,
            },
            metrics={"enable": False},
            **extra,
        )

    @contextlib.asynccontextmanager
    async def hub(self, **extra) -> AsyncIterator[Hub]:
        stop = asyncio.Event()
        hub = Hub(
            self.settings(**extra), clock=SystemClock(), registry=CollectorRegistry(), stop=stop
        )
        task = asyncio.create_task(hub.run())
        try:
            await asyncio.wait_for(hub.ready.wait(), 20)
            yield hub
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)

    @contextlib.asynccontextmanager
    async def view(self) -> AsyncIterator[HomeAssistantView]:
        view = HomeAssistantView(
            self.mqtt_host, self.mqtt_port, discovery_prefix=self.discovery, base=self.base
        )
        async with view.running():
            yield view

    async def send(self, *records: KafkaRecord) -> None:
        if self.producer is None:
            self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=0)
            await self.producer.start()
        for record in records:
            await self.producer.send_and_wait(
                record.topic, record.value, key=record.key, headers=record.headers
            )

    async def send_raw(self, topic: str, value: bytes, headers=(), key=b"x") -> None:
        await self.send(KafkaRecord(topic, key, value, list(headers)))

    async def committed(self) -> dict[TopicPartition, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group)
        await consumer.start()
        try:
            result = {}
            for topic in topic_names(self.namespace):
                for partition in consumer.partitions_for_topic(topic) or ():
                    tp = TopicPartition(topic, partition)
                    offset = await consumer.committed(tp)
                    if offset is not None:
                        result[tp] = offset
            return result
        finally:
            await consumer.stop()

    async def close(self) -> None:
        if self.producer is not None:
            await self.producer.stop()


@pytest.fixture
async def rig(kafka_bootstrap, mqtt_broker, unique_name) -> AsyncIterator[Rig]:
    rig = Rig(kafka_bootstrap, mqtt_broker.host, mqtt_broker.port, unique_name)
    await create_kafka_topics(kafka_bootstrap, dict.fromkeys(topic_names(unique_name), 2))
    try:
        yield rig
    finally:
        await rig.close()


def counted(counter, **labels: str) -> float:
    """A counter's total over the samples with ``labels``."""
    return sum(
        sample.value
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
        and all(sample.labels.get(key) == value for key, value in labels.items())
    )


def shown(device: str, **expected):
    """A condition: the device's entities display ``expected`` (entity name -> state)."""
    names = {key.replace("_", " ").capitalize(): value for key, value in expected.items()}

    def check(entities) -> bool:
        for name, value in names.items():
            entity = entities.get((device, name))
            if entity is None or entity.state != value:
                return False
        return True

    return check


async def test_a_drive_and_a_charge_reach_home_assistant(rig, t0):
    car = SimulatedCar(sample_vin(1), name="Blue")
    ns = rig.namespace
    async with rig.hub(), rig.view() as ha:
        at = t0
        await rig.send(
            connectivity_record(ns, car.vin, at, "conn-1", True),
            telemetry_record(ns, car.vin, at, car.signals(everything=True)),
        )
        entities = await ha.wait_for(shown("Blue", battery_level=62.0, shift_state="p"))
        assert entities[("Blue", "Online")].state == "on"
        assert entities[("Blue", "Lock")].state == "off"  # locked
        assert entities[("Blue", "Software version")].state == "2025.44.25.5"
        assert entities[("Blue", "Tyre pressure front left")].state == pytest.approx(2.9)
        assert entities[("Blue", "Charging state")].state == "disconnected"
        assert entities[("Blue", "Charging")].state == "off"
        assert entities[("Blue", "Battery level")].available
        assert entities[("Blue", "Data source")].state == "fleet_telemetry"
        # Driving, half of the records as protojson from a car without prefer_typed.
        for minute in range(1, 6):
            at = t0 + timedelta(minutes=minute)
            car.drive(60, 40.0, turn_deg=10)
            await rig.send(
                telemetry_record(
                    ns, car.vin, at, car.signals(), as_json=minute % 2 == 0, typed=minute % 2 == 1
                )
            )
        entities = await ha.wait_for(
            shown("Blue", speed=40.0, shift_state="d", driving="on", odometer=car.odometer_mi)
        )
        location = entities[("Blue", "Location")]
        assert location.state == pytest.approx((car.latitude, car.longitude))
        assert location.attributes["heading"] == pytest.approx(car.heading)
        # No speed attribute: Home Assistant would not convert it for metric users.
        assert "speed" not in location.attributes
        # No source reports an accuracy, and none is made up.
        assert "gps_accuracy" not in location.attributes
        # Park and charge.
        car.park()
        car.plug_in(11.0, 240.0)
        at += timedelta(minutes=10)
        await rig.send(telemetry_record(ns, car.vin, at, car.signals()))
        entities = await ha.wait_for(
            shown("Blue", charging_state="charging", charging="on", charger_power=11.0)
        )
        assert entities[("Blue", "Charger voltage")].state == 240.0
        assert entities[("Blue", "Charger current")].state == pytest.approx(46.0)
        assert entities[("Blue", "Time to full charge")].state == pytest.approx(car.hours_to_full())
        assert entities[("Blue", "Charge cable")].state == "on"
        car.charge(3 * 3600)
        at += timedelta(hours=3)
        await rig.send(
            telemetry_record(ns, car.vin, at, car.signals()),
            alerts_record(ns, car.vin, at, [("ChargePortColdWeatherMode", at, None)]),
        )
        # The alerts record may land in a later state document than the telemetry.
        entities = await ha.wait_for(
            shown("Blue", charging_state="complete", battery_level=80.0, active_alerts="1")
        )
        assert entities[("Blue", "Time to full charge")].state is None  # invalid -> cleared
        alerts = entities[("Blue", "Active alerts")]
        assert alerts.attributes["alerts"][0]["name"] == "ChargePortColdWeatherMode"
        # Units Home Assistant gets are the car's.
        units = {
            name: e.config.get("unit_of_measurement")
            for (device, name), e in entities.items()
            if device == "Blue"
        }
        assert units["Odometer"] == "mi" and units["Speed"] == "mph"
        assert units["Inside temperature"] == "°C" and units["Charger power"] == "kW"


async def test_resends_replays_and_duplicates_are_harmless(rig, t0):
    vin = sample_vin(2)
    ns = rig.namespace
    async with rig.hub(vehicles={vin: "Grey"}), rig.view() as ha:
        await rig.send(
            telemetry_record(
                ns, vin, t0 + timedelta(minutes=5), {"BatteryLevel": 70.0, "Odometer": 200.0}
            ),
            telemetry_record(
                ns, vin, t0, {"BatteryLevel": 50.0, "Odometer": 150.0}, is_resend=True
            ),
            telemetry_record(
                ns, vin, t0 + timedelta(minutes=5), {"BatteryLevel": 70.0, "Odometer": 200.0}
            ),
            telemetry_record(ns, vin, t0 + timedelta(minutes=6), {"InsideTemp": 19.5}),
        )
        await ha.wait_for(shown("Grey", inside_temperature=19.5))
        assert ha.value("Grey", "Battery level") == 70.0
        assert ha.value("Grey", "Odometer") == 200.0
    committed = await rig.committed()
    assert sum(committed.values()) == 4
    # A new instance of the group starts from the commits; an old record re-sent by the
    # producer (at least once) changes nothing, and the state is restored from the broker.
    async with rig.hub(vehicles={vin: "Grey"}), rig.view() as ha:
        await rig.send(
            telemetry_record(ns, vin, t0 + timedelta(minutes=1), {"BatteryLevel": 55.0}),
            telemetry_record(ns, vin, t0 + timedelta(minutes=7), {"VehicleSpeed": 0.0}),
        )
        await ha.wait_for(shown("Grey", speed=0.0))
        # The parked car's other values were restored, not blanked.
        assert ha.value("Grey", "Battery level") == 70.0
        assert ha.value("Grey", "Inside temperature") == 19.5
        assert ha.value("Grey", "Odometer") == 200.0


async def test_malformed_records_are_counted_skipped_and_committed(rig, t0):
    vin = sample_vin(3)
    ns = rig.namespace
    limit = {"max_record_bytes": 64 * 1024}
    async with rig.hub(vehicles={vin: "Odd"}, kafka=limit) as hub, rig.view() as ha:
        await rig.send_raw(f"{ns}_V", b"\x0a\xff\xff\xff", [("txtype", b"V")])
        await rig.send_raw(f"{ns}_V", b'{"data": [', [("txtype", b"V")])
        await rig.send_raw(f"{ns}_alerts", b"\x0a\x00", [("txtype", b"metrics")])
        await rig.send_raw(f"{ns}_V", b"\x0a" * (100 * 1024), [("txtype", b"V")])
        await rig.send(telemetry_record(ns, vin, t0, {"BatteryLevel": 33.0}))
        await ha.wait_for(shown("Odd", battery_level=33.0))
        malformed = hub.ingest.metrics.malformed
        reasons = {
            s.labels["reason"]: s.value
            for metric in malformed.collect()
            for s in metric.samples
            if s.name.endswith("_total")
        }
        assert reasons == {
            "bad_protobuf": 1.0,
            "bad_json": 1.0,
            "unknown_type": 1.0,
            "oversize": 1.0,
        }
        await asyncio.sleep(0.5)  # one commit interval
    assert sum((await rig.committed()).values()) == 5


async def test_a_car_clock_in_year_2999_does_not_freeze_its_fields(rig, t0):
    vin = sample_vin(6)
    ns = rig.namespace
    async with rig.hub(vehicles={vin: "Skewed"}) as hub, rig.view() as ha:
        await rig.send(
            telemetry_record(
                ns, vin, datetime(2999, 1, 1, tzinfo=UTC), {"BatteryLevel": 99.0}, received_at=t0
            )
        )
        await ha.wait_for(shown("Skewed", battery_level=99.0))
        for minute, level in ((1, 61.0), (2, 60.0)):
            await rig.send(
                telemetry_record(ns, vin, t0 + timedelta(minutes=minute), {"BatteryLevel": level})
            )
            await ha.wait_for(shown("Skewed", battery_level=level))
        assert counted(hub.ingest.metrics.future) == 1


async def test_connectivity_names_the_car_of_the_certificate(rig, t0):
    vin, claimed = sample_vin(7), sample_vin(8)
    ns = rig.namespace
    names = {vin: "Certified", claimed: "Claimed"}
    async with rig.hub(vehicles=names) as hub, rig.view() as ha:
        await rig.send(connectivity_record(ns, vin, t0, "conn-1", True, message_vin=claimed))
        entities = await ha.wait_for(shown("Certified", online="on"))
        assert not any(device == "Claimed" for device, _name in entities)
        assert counted(hub.ingest.metrics.vin_mismatches, type="connectivity") == 1


async def test_home_assistant_birth_brings_discovery_then_states_again(rig, t0):
    vin = sample_vin(4)
    async with rig.hub(vehicles={vin: "Again"}), rig.view() as ha:
        await rig.send(telemetry_record(rig.namespace, vin, t0, {"BatteryLevel": 44.0}))
        await ha.wait_for(shown("Again", battery_level=44.0))
        before = ha.config_messages
        await ha.announce_online()
        await ha.wait_for(lambda _entities: ha.config_messages > before)
        assert ha.value("Again", "Battery level") == 44.0


async def test_fleet_telemetry_fills_the_entities_teslamate_fills(rig, t0):
    vin = sample_vin(9)
    ns = rig.namespace
    # A state document from before these signals were mapped: they were kept as extra
    # fields, whose entities must not outlive the mapping.
    old = StateStore()
    old.update(vin, "battery_level", 70.0, t0.timestamp() - 60, "fleet_telemetry")
    old.update(vin, "ft_fd_window", "Closed", t0.timestamp() - 60, "fleet_telemetry")
    async with aiomqtt.Client(rig.mqtt_host, rig.mqtt_port) as client:
        document = encode(state_document(old.vehicle(vin)))
        await client.publish(f"{rig.base}/{vin}/state", document, qos=1, retain=True)
    async with rig.hub(vehicles={vin: "Grey"}), rig.view() as ha:
        signals = {
            "FdWindow": "Closed",
            "RdWindow": "Closed",
            "FpWindow": "Closed",
            "RpWindow": "Opened",
            "TpmsSoftWarnings": {"front_right": True},
            "HvacPower": "On",
            "SoftwareUpdateVersion": "2026.20.3 8f1c2d3e4a5b",
            "SoftwareUpdateDownloadPercentComplete": 37,
            "DestinationName": "Work",
            "DestinationLocation": (37.3861, -122.0839),
            "ExpectedEnergyPercentAtTripArrival": 64,
            "RouteTrafficMinutesDelay": 3.5,
        }
        await rig.send(telemetry_record(ns, vin, t0, signals, as_json=True))
        entities = await ha.wait_for(
            shown("Grey", windows="on", climate="on", software_update_available="on")
        )
        assert entities[("Grey", "Rear passenger window")].state == "on"
        assert entities[("Grey", "Front driver window")].state == "off"
        assert entities[("Grey", "Tyre pressure warning front right")].state == "on"
        assert entities[("Grey", "Tyre pressure warning rear left")].state == "off"
        assert entities[("Grey", "Preconditioning")].state == "off"
        assert entities[("Grey", "Software update version")].state == "2026.20.3"
        assert entities[("Grey", "Software update download")].state == 37.0
        assert entities[("Grey", "Battery level")].state == 70.0  # restored
        destination = entities[("Grey", "Destination")]
        assert destination.state == "Work"
        assert destination.attributes == {"latitude": 37.3861, "longitude": -122.0839}
        assert entities[("Grey", "Battery at arrival")].state == 64.0
        assert entities[("Grey", "Traffic delay")].state == 3.5
        assert not any(name == "Fd window" for _device, name in entities)
        assert entities[("Grey", "Data source")].state == "fleet_telemetry"


async def test_mqtt_outage_pauses_consumption_and_nothing_is_lost(kafka_bootstrap, unique_name, t0):
    await create_kafka_topics(kafka_bootstrap, dict.fromkeys(topic_names(unique_name), 1))
    async with mosquitto_broker() as (host, port):
        pass  # a free port to restart the broker on
    vin = sample_vin(5)
    rig = Rig(kafka_bootstrap, host, port, unique_name)
    try:
        async with mosquitto_broker(port=port):
            hub_context = rig.hub(vehicles={vin: "Patient"})
            hub = await hub_context.__aenter__()
            try:
                async with rig.view() as ha:
                    await rig.send(telemetry_record(rig.namespace, vin, t0, {"BatteryLevel": 10.0}))
                    await ha.wait_for(shown("Patient", battery_level=10.0))
                await asyncio.sleep(0.5)
                delivered = sum((await rig.committed()).values())
            except BaseException:
                await hub_context.__aexit__(None, None, None)
                raise
        # The broker is gone: records keep coming, none may be committed.
        for minute in range(1, 4):
            await rig.send(
                telemetry_record(
                    rig.namespace,
                    vin,
                    t0 + timedelta(minutes=minute),
                    {"BatteryLevel": 10.0 + minute},
                )
            )
        try:
            for _ in range(40):
                if hub.health_mqtt() is not None:
                    break
                await asyncio.sleep(0.05)
            assert hub.health_mqtt() is not None
            await asyncio.sleep(1.0)
            assert sum((await rig.committed()).values()) == delivered
            async with mosquitto_broker(port=port), rig.view() as ha:
                await ha.wait_for(shown("Patient", battery_level=13.0), within=30)
                await asyncio.sleep(0.5)
                assert sum((await rig.committed()).values()) == delivered + 3
        finally:
            with contextlib.suppress(Exception):
                await hub_context.__aexit__(None, None, None)
    finally:
        await rig.close()


class HubProcess:
    """``gridmate vehicles run`` as its own process, observed through its metrics."""

    def __init__(self, rig: Rig, workdir: Path, name: str, vehicles: dict[str, str]) -> None:
        self.name = name
        self.metrics_port = _free_port()
        directory = workdir / name
        directory.mkdir()
        self.config = directory / "vehicles.toml"
        self.log_path = directory / "hub.log"
        names = "".join(f'{vin} = "{car}"\n' for vin, car in vehicles.items())
        fast = TANSU_FAST_GROUP_CONSUMER_CONFIG
        self.config.write_text(
            f'state_directory = "{directory}"\nruntime_directory = "{directory}"\n'
            f"[metrics]\nport = {self.metrics_port}\n"
            f'[kafka]\nbootstrap_servers = "{rig.bootstrap}"\nnamespace = "{rig.namespace}"\n'
            f'group_id = "{rig.group}"\ncommit_interval = 0.2\nstatic_membership = false\n'
            f"session_timeout = {fast['session_timeout_ms'] / 1000}\n"
            f"heartbeat_interval = {fast['heartbeat_interval_ms'] / 1000}\n"
            f'[mqtt]\nhost = "{rig.mqtt_host}"\nport = {rig.mqtt_port}\n'
            f'[homeassistant]\nbase_topic = "{rig.base}"\ndiscovery_prefix = "{rig.discovery}"\n'
            f"birth_delay = 0\n[vehicles]\n{names}"
        )
        self.process: asyncio.subprocess.Process | None = None
        self._log: Any = None

    async def start(self) -> None:
        self._log = self.log_path.open("w")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from gridmate.cli import main; main()",
            "vehicles",
            "run",
            "--config",
            str(self.config),
            stdout=self._log,
            stderr=self._log,
        )

    async def samples(self) -> list[Any]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                text = (await client.get(url)).text
        except httpx.HTTPError:
            return []
        return [s for family in text_string_to_metric_families(text) for s in family.samples]

    async def assignment(self) -> set[tuple[str, int]]:
        return {
            (s.labels["topic"], int(s.labels["partition"]))
            for s in await self.samples()
            if s.name == "gridmate_vehicles_assigned_partitions" and s.value == 1
        }

    async def records(self, record_type: str) -> float:
        return sum(
            s.value
            for s in await self.samples()
            if s.name == "gridmate_vehicles_records_total" and s.labels["type"] == record_type
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.terminate()
        code = await asyncio.wait_for(self.process.wait(), 30)
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def until(condition, within: float = 60.0, what: str = "") -> None:
    """Wait until the async ``condition()`` holds (checked every 100 ms)."""
    try:
        async with asyncio.timeout(within):
            while not await condition():
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"not within {within:.0f}s: {what}") from None


PARTITIONS = 4


async def test_two_instances_split_vehicles_and_hand_over(rig, tmp_path, t0):
    """Numbered records flow while a second instance joins and while it is SIGKILLed;
    every record's effect reaches MQTT, each instance serves its own share, and the
    committed offsets end where production ended."""
    await create_kafka_topics(
        rig.bootstrap, dict.fromkeys(topic_names(f"{rig.namespace}x"), PARTITIONS)
    )
    rig.namespace = f"{rig.namespace}x"  # topics with more partitions than the fixture's
    ns = rig.namespace
    cars = [sample_vin(20 + n) for n in range(2 * PARTITIONS)]
    names = {vin: f"Car {n}" for n, vin in enumerate(cars)}
    partition_of = {vin: n % PARTITIONS for n, vin in enumerate(cars)}
    produced: dict[TopicPartition, int] = {}
    steps: dict[str, int] = dict.fromkeys(cars, 0)
    producer = AIOKafkaProducer(bootstrap_servers=rig.bootstrap, linger_ms=0)
    await producer.start()

    async def step(vin: str) -> None:
        """Record n of a car: one more active alert (they add up) and its odometer."""
        steps[vin] += 1
        n = steps[vin]
        at = t0 + timedelta(seconds=n)
        for record in (
            alerts_record(ns, vin, at, [(f"Seq{n}", at, None)]),
            telemetry_record(ns, vin, at, {"Odometer": float(n)}),
        ):
            partition = partition_of[vin]
            await producer.send_and_wait(
                record.topic, record.value, key=record.key, partition=partition,
                headers=record.headers,
            )  # fmt: skip
            tp = TopicPartition(record.topic, partition)
            produced[tp] = produced.get(tp, 0) + 1

    flowing = asyncio.Event()

    async def flow() -> None:
        while True:
            await flowing.wait()
            for vin in cars:
                await step(vin)
            await asyncio.sleep(0.05)

    def everything_shown(entities) -> bool:
        for vin in cars:
            alerts = entities.get((names[vin], "Active alerts"))
            odometer = entities.get((names[vin], "Odometer"))
            if alerts is None or odometer is None or odometer.state != steps[vin]:
                return False
            shown_names = {a["name"] for a in alerts.attributes.get("alerts", ())}
            if shown_names != {f"Seq{n}" for n in range(1, steps[vin] + 1)}:
                return False
        return True

    first = HubProcess(rig, tmp_path, "first", names)
    second = HubProcess(rig, tmp_path, "second", names)
    all_partitions = {(f"{ns}_{t}", p) for t in ("V", "alerts", "errors", "connectivity")
                      for p in range(PARTITIONS)}  # fmt: skip
    producing = asyncio.create_task(flow())
    try:
        async with rig.view() as ha:
            await first.start()
            await until(lambda: _equals(first.assignment(), all_partitions), what="first assigned")
            flowing.set()
            await until(lambda: _records_at_least(first, 4 * len(cars)), what="first consuming")

            # A second instance joins while records flow: the group rebalances.
            await second.start()

            async def split() -> bool:
                mine, theirs = await first.assignment(), await second.assignment()
                return (
                    bool(mine)
                    and bool(theirs)
                    and not mine & theirs
                    and (mine | theirs == all_partitions)
                )

            await until(split, what="the two instances split the partitions")
            flowing.clear()
            await ha.wait_for(everything_shown, within=60)

            # Each instance serves exactly its own partitions' records.
            mine = {p for t, p in await first.assignment() if t == f"{ns}_V"}
            theirs = {p for t, p in await second.assignment() if t == f"{ns}_V"}
            assert mine and theirs, (mine, theirs)
            before = (await first.records("V"), await second.records("V"))
            rounds = 5
            for _ in range(rounds):
                for vin in cars:
                    await step(vin)
            await ha.wait_for(everything_shown, within=60)
            after = (await first.records("V"), await second.records("V"))
            per_partition = rounds * len(cars) // PARTITIONS
            assert after[0] - before[0] == per_partition * len(mine)
            assert after[1] - before[1] == per_partition * len(theirs)

            # Records flow again, and the second instance is killed mid-stream.
            flowing.set()
            await until(lambda: _records_at_least(second, after[1] + 8), what="second busy")
            second.kill()
            await until(
                lambda: _equals(first.assignment(), all_partitions),
                what="first took every partition over",
            )
            await until(lambda: _records_at_least(first, after[0] + 40), what="first busy")
            flowing.clear()
            await ha.wait_for(everything_shown, within=60)

            async def all_committed() -> bool:
                return await rig.committed() == produced

            await until(all_committed, what="offsets committed up to what was produced")
            assert sum(steps.values()) > (rounds + 10) * len(cars)
            assert await first.stop() == 0
    finally:
        producing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producing
        await producer.stop()
        for hub in (first, second):
            if hub.process is not None and hub.process.returncode is None:
                hub.kill()
                await hub.process.wait()


async def _equals(value, expected) -> bool:
    return await value == expected


async def _records_at_least(hub: HubProcess, count: float) -> bool:
    return await hub.records("V") >= count
