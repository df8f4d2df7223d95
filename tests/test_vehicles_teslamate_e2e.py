"""The vehicles hub with TeslaMate, Tesla API polling and Fleet Telemetry, end to end.

Real Mosquitto (TeslaMate's topics and Home Assistant's), real PostgreSQL with
TeslaMate's tables, the Tesla cloud simulator (rate limits, sleeping cars) and, for
the takeover, a real Kafka-protocol broker. What Home Assistant would display is read
back through discovery and templates. Time runs accelerated so "five minutes of
silence" takes a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gridmate.homeassistant.view import HomeAssistantView
from gridmate.runtime.clock import SimulatedClock
from gridmate.runtime.secrets import Secret
from gridmate.sim.tesla_cloud import SimulatedVehicle, tesla_cloud_simulator
from gridmate.sim.teslamate import (
    TeslaMateCarModel,
    clear_retained,
    create_teslamate_schema,
    simulated_teslamate,
)
from gridmate.tesla.fleet_api import FleetApi
from gridmate.tesla.tokens import StaticTokenProvider
from gridmate.vehicles.hub import Hub
from gridmate.vehicles.settings import VehiclesSettings

pytestmark = pytest.mark.services

VIN = "5YJ3E1EA7KF000001"
NAME = "Red"
SPEED = 30.0
"""Simulated seconds per real second."""


class Rig:
    def __init__(self, broker: Any, dsn: str | None, speed: float = SPEED) -> None:
        self.broker = broker
        self.dsn = dsn
        prefix = broker.topic_prefix()
        self.namespace = prefix  # TeslaMate's MQTT_NAMESPACE: isolates this test's topics
        self.base = f"{prefix}gm"
        self.discovery = f"{prefix}ha"
        self.clock = SimulatedClock(datetime.now(UTC), speed=speed)
        self.cloud: Any = None
        self.teslamate: Any = None

    def settings(self, **extra: Any) -> VehiclesSettings:
        teslamate = {
            "enable": True,
            "mqtt": {"host": self.broker.host, "port": self.broker.port},
            "namespace": self.namespace,
            "stale_after": 60,
            "use_database": self.dsn is not None,
            "database_check_interval": 10,
            "database_lag_tolerance": 30,
        }
        if self.dsn is None:
            teslamate["cars"] = {1: VIN}
        teslamate.update(extra.pop("teslamate", {}))
        tesla: dict[str, Any] = {}
        if self.dsn is not None:
            tesla = {"teslamate": {"dsn": self.dsn}}
        return VehiclesSettings(
            mqtt={"host": self.broker.host, "port": self.broker.port},
            homeassistant={
                "base_topic": self.base,
                "discovery_prefix": self.discovery,
                "birth_delay": 0,
            },
            teslamate=teslamate,
            tesla=tesla,
            polling={"start_delay": 60, "active_interval": 60},
            arbitration={"evaluate_interval": 5, "fleet_telemetry_stale_after": 60},
            metrics={"enable": False},
            **extra,
        )

    @contextlib.asynccontextmanager
    async def hub(self, **extra: Any) -> AsyncIterator[Hub]:
        access, _refresh = self.cloud.issue_tokens()
        api = FleetApi(
            StaticTokenProvider(Secret(access)), base_url=self.cloud.base_url, clock=self.clock
        )
        stop = asyncio.Event()
        hub = Hub(
            self.settings(**extra),
            clock=self.clock,
            registry=CollectorRegistry(),
            stop=stop,
            fleet_api=api,
        )
        task = asyncio.create_task(hub.run())
        try:
            await asyncio.wait_for(hub.ready.wait(), 20)
            yield hub
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
            await api.aclose()

    @contextlib.asynccontextmanager
    async def view(self) -> AsyncIterator[HomeAssistantView]:
        view = HomeAssistantView(
            self.broker.host, self.broker.port, discovery_prefix=self.discovery, base=self.base
        )
        async with view.running():
            yield view


@contextlib.asynccontextmanager
async def rig_with(
    broker: Any,
    dsn: str | None,
    teslamate_car: TeslaMateCarModel,
    cloud_car: SimulatedVehicle,
    speed: float = SPEED,
) -> AsyncIterator[Rig]:
    rig = Rig(broker, dsn, speed)
    if dsn is not None:
        await create_teslamate_schema(dsn)
    async with tesla_cloud_simulator(vehicles=[cloud_car], clock=rig.clock) as cloud:
        rig.cloud = cloud
        async with simulated_teslamate(
            broker.host,
            broker.port,
            [teslamate_car],
            namespace=rig.namespace,
            clock=rig.clock,
            database=dsn,
            polling=True,
        ) as teslamate:
            rig.teslamate = teslamate
            try:
                yield rig
            finally:
                retained = {t for t, _p, retain in teslamate.published if retain}
                await clear_retained(broker.host, broker.port, retained)


def shows(**expected: Any):
    """A condition on Home Assistant's entities of the car, by entity name."""

    def check(entities: dict) -> bool:
        for name, value in expected.items():
            entity = entities.get((NAME, name))
            if entity is None:
                return False
            if isinstance(value, float) and isinstance(entity.state, float):
                if abs(entity.state - value) > 0.01:
                    return False
            elif entity.state != value:
                return False
        return True

    return check


async def until(condition: Any, within: float = 30.0) -> None:
    """Wait until ``condition()`` holds (checked every 20 ms)."""
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.02)


def charging_car(**extra: Any) -> TeslaMateCarModel:
    values = {
        "name": NAME,
        "state": "charging",
        "charging_state": "Charging",
        "battery_level": 60,
        "charger_power": 11.0,
        "charger_voltage": 240,
        "charger_actual_current": 16.0,
        "charger_phases": 1,
        "time_to_full_charge": 2.0,
    } | extra
    return TeslaMateCarModel(1, VIN, **values)


def words(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gridmate.vehicles.sources"]


async def test_teslamate_healthy_unhealthy_healthy(mqtt_broker, postgres_dsn, caplog):
    caplog.set_level(logging.INFO)
    cloud_car = SimulatedVehicle(
        vin=VIN, display_name=NAME, battery_level=55, charging_state="Charging"
    )
    async with (
        rig_with(mqtt_broker, postgres_dsn, charging_car(), cloud_car) as rig,
        rig.hub() as hub,
        rig.view() as ha,
    ):
        entities = await ha.wait_for(
            shows(
                **{
                    "Data source": "teslamate",
                    "Battery level": 60.0,
                    "Charging": "on",
                    "Charger power": 11.0,
                    "Tyre pressure rear right": 2.9,
                }
            )
        )
        assert entities[(NAME, "Rated range")].state == pytest.approx(186.4, abs=0.01)
        assert entities[(NAME, "Data source")].config["entity_category"] == "diagnostic"
        # Polling has started (after its start_delay) and could take the car.
        await until(lambda: "tesla_api" in hub.sources.book.trusted(VIN))
        # TeslaMate loses its Tesla API access: polling takes over.
        rig.teslamate.cars[1].healthy = False
        await rig.teslamate.summary(1)
        await ha.wait_for(shows(**{"Data source": "tesla_api", "Battery level": 55.0}), 30)
        assert rig.cloud.calls_to("vehicle_data")
        # Healthy again, with news: TeslaMate is back, and what it said counts.
        rig.teslamate.cars[1].healthy = True
        await rig.teslamate.set_state(1, "charging", battery_level=62)
        await ha.wait_for(shows(**{"Data source": "teslamate", "Battery level": 62.0}), 30)
    said = words(caplog)
    assert "telemetry for Red is now provided by TeslaMate" in said
    # The switch names why: TeslaMate's own healthy flag, not silence.
    assert (
        "data from TeslaMate for Red is stale; switching to Tesla API polling "
        "(TeslaMate reports that its access to the Tesla API is failing)"
    ) in said
    assert rig.cloud.calls_to("wake_up") == []


async def test_teslamate_dies_while_the_car_charges(mqtt_broker, caplog):
    caplog.set_level(logging.INFO)
    cloud_car = SimulatedVehicle(
        vin=VIN, display_name=NAME, battery_level=70, charging_state="Charging"
    )
    async with (
        rig_with(mqtt_broker, None, charging_car(), cloud_car) as rig,
        rig.hub(),
        rig.view() as ha,
    ):
        await ha.wait_for(shows(**{"Data source": "teslamate", "Battery level": 60.0}))
        # Nothing was asked of Tesla while TeslaMate served the car.
        assert rig.cloud.calls == []
        await rig.teslamate.die()
        await ha.wait_for(shows(**{"Data source": "tesla_api", "Battery level": 70.0}), 30)
    assert any(
        "data from TeslaMate for Red is stale; switching to Tesla API polling" in w
        and "while the car is driving or charging" in w
        for w in words(caplog)
    )


async def test_a_dead_mqtt_link_is_found_in_teslamates_database(mqtt_broker, postgres_dsn):
    teslamate_car = charging_car(state="asleep", charging_state="Disconnected", charger_power=None)
    cloud_car = SimulatedVehicle(vin=VIN, display_name=NAME, battery_level=58, state="online")
    async with (
        rig_with(mqtt_broker, postgres_dsn, teslamate_car, cloud_car) as rig,
        rig.hub() as hub,
        rig.view() as ha,
    ):
        await ha.wait_for(shows(**{"Data source": "teslamate", "Online": "off"}))
        # TeslaMate keeps polling and writing its database, but its MQTT is gone;
        # the car wakes and drives. Over MQTT it still looks asleep.
        rig.teslamate.mqtt_broken = True

        async def drive() -> None:
            while True:  # TeslaMate polls the driving car every few seconds
                await rig.teslamate.set_state(1, "driving", speed_mph=30.0, shift_state="D")
                await rig.clock.sleep(5)

        driving = asyncio.create_task(drive())
        try:
            await ha.wait_for(shows(**{"Data source": "tesla_api", "Battery level": 58.0}), 30)
        finally:
            driving.cancel()
        assert hub.sources is not None
        verdict = hub.sources.book.verdict(VIN, "teslamate")
        assert verdict is not None and "never arrived over MQTT" in verdict.reason


async def test_a_sleeping_car_is_not_polled(mqtt_broker):
    teslamate_car = charging_car(state="asleep", charging_state="Disconnected", charger_power=None)
    cloud_car = SimulatedVehicle(vin=VIN, display_name=NAME, state="asleep")
    async with (
        rig_with(mqtt_broker, None, teslamate_car, cloud_car, speed=300) as rig,
        rig.hub(),
        rig.view() as ha,
    ):
        await ha.wait_for(shows(**{"Data source": "teslamate", "Online": "off"}))
        await rig.clock.sleep(1800)  # half an hour of sleep
        assert rig.cloud.calls == []  # TeslaMate covers it: no Tesla API call at all
        # TeslaMate dies while the car sleeps: its silence is normal, and polling is not
        # needed; even if it were, the list would only say "asleep".
        await rig.teslamate.die()
        await rig.clock.sleep(1800)
        assert rig.cloud.calls_to("vehicle_data") == []
        assert rig.cloud.calls_to("wake_up") == []
        assert cloud_car.wakes == 0
        assert ha.value(NAME, "Data source") == "teslamate"


@pytest.mark.parametrize(
    ("state", "online", "cloud_state"),
    [
        # The car dropped off the network (TeslaMate also says so for a car driving
        # out of coverage): not online, nothing to expect from TeslaMate.
        ("offline", "off", "offline"),
        # TeslaMate stopped polling so that the car can fall asleep: still online,
        # but silent by design.
        ("suspended", "on", "online"),
    ],
)
async def test_offline_and_suspended_cars_are_quiet_not_stale(
    mqtt_broker, state, online, cloud_state
):
    teslamate_car = charging_car(
        state="driving",
        charging_state="Disconnected",
        charger_power=None,
        speed_mph=30.0,
        shift_state="D",
    )
    cloud_car = SimulatedVehicle(vin=VIN, display_name=NAME, state=cloud_state)
    async with (
        rig_with(mqtt_broker, None, teslamate_car, cloud_car, speed=300) as rig,
        rig.hub() as hub,
        rig.view() as ha,
    ):
        await ha.wait_for(shows(**{"Data source": "teslamate", "Online": "on", "Driving": "on"}))
        await rig.teslamate.set_state(1, state, shift_state="P", speed_mph=None)
        entities = await ha.wait_for(shows(**{"Online": online, "Driving": "off"}))
        assert entities[(NAME, "Speed")].state is None
        # Ten minutes of silence, ten times TeslaMate's stale_after: normal in this state.
        await rig.clock.sleep(600)
        assert hub.sources is not None
        verdict = hub.sources.book.verdict(VIN, "teslamate")
        assert verdict is not None and verdict.health == "quiet"
        assert ha.value(NAME, "Data source") == "teslamate"
        assert rig.cloud.calls_to("vehicle_data") == []
        assert rig.cloud.calls_to("wake_up") == []


async def test_teslamate_dies_while_the_car_sleeps_and_then_the_car_drives(mqtt_broker, caplog):
    caplog.set_level(logging.INFO)
    teslamate_car = charging_car(state="asleep", charging_state="Disconnected", charger_power=None)
    cloud_car = SimulatedVehicle(vin=VIN, display_name=NAME, state="asleep", battery_level=57)
    async with rig_with(mqtt_broker, None, teslamate_car, cloud_car, speed=60) as rig:
        watch = {"web_url": rig.teslamate.web_url, "web_check_interval": 30}
        async with rig.hub(teslamate=watch) as hub, rig.view() as ha:
            await ha.wait_for(shows(**{"Data source": "teslamate", "Online": "off"}))
            # TeslaMate dies while the car sleeps: MQTT stays silent either way, but
            # its web interface stops answering.
            await rig.teslamate.die()
            await ha.wait_for(shows(**{"Data source": "tesla_api"}), 30)
            assert hub.sources is not None
            assert hub.sources.health_teslamate() == (
                f"TeslaMate does not answer at {rig.teslamate.web_url} (ConnectError)"
            )
            # The vehicle list still says asleep: nothing is read, nothing woken.
            assert rig.cloud.calls_to("vehicle_data") == []
            # The car wakes up and drives.
            cloud_car.state = "online"
            cloud_car.shift_state, cloud_car.speed_mph = "D", 40
            entities = await ha.wait_for(
                shows(**{"Online": "on", "Driving": "on", "Speed": 40.0}), 60
            )
            assert entities[(NAME, "Data source")].state == "tesla_api"
            assert entities[(NAME, "Battery level")].state == 57.0
        assert rig.cloud.calls_to("wake_up") == []
        assert cloud_car.wakes == 0
    said = words(caplog)
    assert any(
        w.startswith("data from TeslaMate for Red is stale; switching to Tesla API polling")
        and "TeslaMate does not answer at" in w
        for w in said
    ), said


async def test_fleet_telemetry_appears_and_takes_over(mqtt_broker, kafka_bootstrap, unique_name):
    from aiokafka import AIOKafkaProducer

    from gridmate.sim.brokers import create_kafka_topics
    from gridmate.sim.fleet_telemetry import connectivity_record, telemetry_record
    from gridmate.vehicles.telemetry.kafka import topic_names

    cloud_car = SimulatedVehicle(vin=VIN, display_name=NAME, charging_state="Charging")
    kafka = {
        "bootstrap_servers": kafka_bootstrap,
        "namespace": unique_name,
        "group_id": f"{unique_name}-g",
        "commit_interval": 0.2,
    }
    signals = {"BatteryLevel": 61.0, "DetailedChargeState": "Charging", "ACChargingPower": 7.2}
    await create_kafka_topics(kafka_bootstrap, dict.fromkeys(topic_names(unique_name), 1))
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
    await producer.start()

    async def stream(rig: Rig) -> None:
        # A charging car streams every few seconds (and Kafka's group join takes a while).
        first = True
        while True:
            now = rig.clock.now()
            records = [telemetry_record(unique_name, VIN, now, signals)]
            if first:
                records.insert(0, connectivity_record(unique_name, VIN, now, "c1", True))
                first = False
            for record in records:
                await producer.send_and_wait(
                    record.topic, record.value, key=record.key, headers=record.headers
                )
            await rig.clock.sleep(20)

    try:
        async with (
            rig_with(mqtt_broker, None, charging_car(), cloud_car) as rig,
            rig.hub(kafka=kafka),
            rig.view() as ha,
        ):
            await ha.wait_for(shows(**{"Data source": "teslamate", "Battery level": 60.0}))
            devices_before = {device for device, _name in ha.entities()}
            names_before = {name for device, name in ha.entities() if device == NAME}
            streaming = asyncio.create_task(stream(rig))
            try:
                entities = await ha.wait_for(
                    shows(**{"Data source": "fleet_telemetry", "Battery level": 61.0}), 30
                )
                assert entities[(NAME, "Charger power")].state == pytest.approx(7.2)
                # TeslaMate keeps publishing, but does not overwrite the better source.
                await rig.teslamate.set_state(1, "charging", battery_level=63)
                await asyncio.sleep(0.5)
                assert ha.value(NAME, "Battery level") == 61.0
            finally:
                streaming.cancel()
            # One device, the same entities, whatever the source.
            assert {device for device, _name in ha.entities()} == devices_before
            assert {n for d, n in ha.entities() if d == NAME} == names_before
            # Fleet Telemetry goes silent while the car charges: TeslaMate takes over, and
            # its next value is shown (its 63 % is older than Fleet Telemetry's last 61 %).
            await ha.wait_for(shows(**{"Data source": "teslamate"}), 30)
            await rig.teslamate.set_state(1, "charging", battery_level=64)
            await ha.wait_for(shows(**{"Data source": "teslamate", "Battery level": 64.0}), 30)
    finally:
        await producer.stop()


async def test_teslamates_sunroof_reaches_home_assistant(mqtt_broker):
    car = charging_car(sun_roof_installed=True, sun_roof_state="open", sun_roof_percent_open=80)
    cloud_car = SimulatedVehicle(vin=VIN, display_name=NAME, state="asleep")
    async with (
        rig_with(mqtt_broker, None, car, cloud_car) as rig,
        rig.hub(),
        rig.view() as ha,
    ):
        entities = await ha.wait_for(shows(**{"Sunroof": 80.0, "Sunroof state": "open"}))
        assert entities[(NAME, "Sunroof")].config["unit_of_measurement"] == "%"
        assert entities[(NAME, "Sunroof installed")].state == "on"
        await rig.teslamate.set_state(
            1, "charging", sun_roof_state="closed", sun_roof_percent_open=0
        )
        await ha.wait_for(shows(**{"Sunroof": 0.0, "Sunroof state": "closed"}))


async def test_a_car_without_a_sunroof_gets_no_sunroof_entities(mqtt_broker):
    cloud_car = SimulatedVehicle(vin=VIN, display_name=NAME, state="asleep")
    async with (
        rig_with(mqtt_broker, None, charging_car(sun_roof_installed=False), cloud_car) as rig,
        rig.hub(),
        rig.view() as ha,
    ):
        entities = await ha.wait_for(shows(**{"Sunroof installed": "off", "Charging": "on"}))
        assert (NAME, "Sunroof") not in entities
        assert (NAME, "Sunroof state") not in entities


async def test_teslamates_route_reaches_home_assistant(mqtt_broker):
    route = {
        "destination": "Work",
        "energy_at_arrival": 71,
        "miles_to_arrival": 6.485299,
        "minutes_to_arrival": 23.466667,
        "traffic_minutes_delay": 4.0,
        "latitude": 37.3861,
        "longitude": -122.0839,
    }
    car = charging_car(state="driving", charging_state="Disconnected", route=route)
    cloud_car = SimulatedVehicle(vin=VIN, display_name=NAME, state="asleep")
    async with (
        rig_with(mqtt_broker, None, car, cloud_car) as rig,
        rig.hub(),
        rig.view() as ha,
    ):
        entities = await ha.wait_for(
            shows(**{"Destination": "Work", "Battery at arrival": 71.0, "Traffic delay": 4.0})
        )
        assert entities[(NAME, "Time to arrival")].state == pytest.approx(23.466667)
        assert entities[(NAME, "Distance to arrival")].state == pytest.approx(6.485299)
        assert entities[(NAME, "Destination")].attributes == {
            "latitude": 37.3861,
            "longitude": -122.0839,
        }
        await rig.teslamate.set_state(1, "online", route=None)
        entities = await ha.wait_for(shows(**{"Destination": None, "Battery at arrival": None}))
        assert entities[(NAME, "Destination")].attributes == {}
        assert entities[(NAME, "Traffic delay")].state is None
