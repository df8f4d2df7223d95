"""Demo: a drive and a charging session, from Fleet Telemetry records to Home Assistant.

A simulated car's records go, as fleet-telemetry writes them, into a real
Kafka-protocol broker; the real hub consumes them and publishes to a real Mosquitto;
the entities are read back the way Home Assistant reads them (discovery, state
topics, value templates).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry

from gridmate.demo import DemoContext, Scenario
from gridmate.homeassistant.view import HomeAssistantView
from gridmate.runtime.clock import SystemClock
from gridmate.sim.brokers import create_kafka_topics
from gridmate.sim.fleet_telemetry import (
    INVALID_DATUM,
    KafkaRecord,
    SimulatedCar,
    connectivity_record,
    sample_vin,
    telemetry_record,
)
from gridmate.vehicles.hub import Hub
from gridmate.vehicles.settings import VehiclesSettings
from gridmate.vehicles.telemetry.kafka import topic_names

NAMESPACE = "demo_tesla"
NAME = "Model 3"


async def _run(ctx: DemoContext) -> list[str]:
    from aiokafka import AIOKafkaProducer

    bootstrap = await ctx.kafka_broker()
    mqtt_host, mqtt_port = await ctx.mqtt_broker()
    await create_kafka_topics(bootstrap, dict.fromkeys(topic_names(NAMESPACE), 2))
    car = SimulatedCar(sample_vin(1), name="Red Arrow")
    settings = VehiclesSettings(
        kafka={
            "bootstrap_servers": bootstrap,
            "namespace": NAMESPACE,
            "commit_interval": 0.5,
            # tansu has no static membership (see docs/vehicles.md).
            "static_membership": False,
        },
        mqtt={"host": mqtt_host, "port": mqtt_port},
        homeassistant={"base_topic": "demo-gridmate", "birth_delay": 0.2},
        vehicles={car.vin: NAME},
        metrics={"enable": False},
        state_directory=ctx.workdir,
        runtime_directory=ctx.workdir,
    )
    stop = asyncio.Event()
    registry = CollectorRegistry()
    hub = Hub(settings, clock=SystemClock(), registry=registry, stop=stop)
    hub_task = asyncio.create_task(hub.run())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()

    async def send(*records: KafkaRecord) -> None:
        for record in records:
            await producer.send_and_wait(
                record.topic, record.value, key=record.key, headers=record.headers
            )

    def view() -> HomeAssistantView:
        return HomeAssistantView(
            mqtt_host, mqtt_port, discovery_prefix="homeassistant", base="demo-gridmate"
        )

    def shows(**expected: object):
        def check(entities: dict) -> bool:
            return all(
                (NAME, name) in entities and entities[(NAME, name)].state == value
                for name, value in expected.items()
            )

        return check

    try:
        await asyncio.wait_for(hub.ready.wait(), 30)
        ctx.say("hub", "connected to Kafka and MQTT; waiting for records")
        at = datetime.now(UTC).replace(hour=7, minute=55, second=0, microsecond=0)
        async with view().running() as ha:
            await send(
                connectivity_record(NAMESPACE, car.vin, at, "c-1", True),
                telemetry_record(NAMESPACE, car.vin, at, car.signals(everything=True)),
            )
            entities = await ha.wait_for(shows(**{"Battery level": 62.0, "Online": "on"}))
            ctx.say(
                "HA",
                f"new device '{NAME}' with {sum(1 for d, _ in entities if d == NAME)} entities; "
                f"battery {entities[(NAME, 'Battery level')].state:.0f} %, "
                f"shift {entities[(NAME, 'Shift state')].state}, "
                f"lock {'locked' if entities[(NAME, 'Lock')].state == 'off' else 'unlocked'}",
                at,
            )

            # The drive: a record a minute, in protobuf and (from an older car) JSON.
            for minute in range(1, 13):
                at += timedelta(minutes=1)
                car.drive(60, 35.0 + (minute % 3) * 8, turn_deg=7)
                await send(telemetry_record(NAMESPACE, car.vin, at, car.signals()))
                if minute % 4 == 0:
                    # The odometer tells this record's state from the previous one's.
                    entities = await ha.wait_for(
                        lambda e, odometer=car.odometer_mi: (
                            shows(Speed=car.speed_mph)(e)
                            and abs(e[(NAME, "Odometer")].state - odometer) < 0.05
                        )
                    )
                    lat, lon = entities[(NAME, "Location")].state
                    ctx.say(
                        "HA",
                        f"driving={entities[(NAME, 'Driving')].state} "
                        f"speed {entities[(NAME, 'Speed')].state:.0f} mph, "
                        f"odometer {entities[(NAME, 'Odometer')].state:.1f} mi, "
                        f"at {lat:.4f},{lon:.4f}",
                        at,
                    )
            arrived = at
            car.park()
            at += timedelta(minutes=1)
            await send(telemetry_record(NAMESPACE, car.vin, at, car.signals()))
            # The car resends a record it believes unacknowledged, with older values.
            await send(
                telemetry_record(
                    NAMESPACE,
                    car.vin,
                    arrived - timedelta(minutes=6),
                    {"VehicleSpeed": 51.0, "BatteryLevel": 70.0},
                    is_resend=True,
                )
            )
            entities = await ha.wait_for(shows(**{"Shift state": "p", "Driving": "off"}))
            ctx.expect(entities[(NAME, "Battery level")].state < 70.0, "a resend went back in time")
            ctx.say("car", "parked; resent an older record (speed 51, battery 70 %)", at)
            ctx.say(
                "HA",
                f"still speed {entities[(NAME, 'Speed')].state:.0f} mph and battery "
                f"{entities[(NAME, 'Battery level')].state:.1f} %: the older values were ignored",
                at,
            )

            # Charging at home.
            car.plug_in(11.0, 240.0)
            at += timedelta(minutes=2)
            await send(telemetry_record(NAMESPACE, car.vin, at, car.signals()))
            entities = await ha.wait_for(shows(**{"Charging state": "charging", "Charging": "on"}))
            ctx.say(
                "HA",
                f"charging at {entities[(NAME, 'Charger power')].state:.1f} kW, "
                f"{entities[(NAME, 'Charger voltage')].state:.0f} V / "
                f"{entities[(NAME, 'Charger current')].state:.0f} A, full in "
                f"{entities[(NAME, 'Time to full charge')].state:.2f} h",
                at,
            )
            while car.charge_state == "Charging":
                at += timedelta(minutes=30)
                car.charge(1800)
                await send(telemetry_record(NAMESPACE, car.vin, at, car.signals()))
            entities = await ha.wait_for(shows(**{"Charging state": "complete"}))
            ctx.expect(entities[(NAME, "Time to full charge")].state is None, "stale estimate")
            ctx.say(
                "HA",
                f"charge complete at {entities[(NAME, 'Battery level')].state:.0f} %; "
                "time to full charge cleared (the car reported it invalid)",
                at,
            )

            # The car goes to sleep: its signals turn invalid, then it disconnects.
            at += timedelta(minutes=20)
            await send(
                telemetry_record(
                    NAMESPACE,
                    car.vin,
                    at,
                    dict.fromkeys(("Gear", "VehicleSpeed", "BatteryLevel"), INVALID_DATUM),
                ),
                connectivity_record(NAMESPACE, car.vin, at + timedelta(seconds=5), "c-1", False),
            )
            entities = await ha.wait_for(shows(Online="off"))
            ctx.expect(entities[(NAME, "Shift state")].state == "p", "sleeping car lost its gear")
            ctx.say(
                "HA",
                f"car asleep: online=off, but shift {entities[(NAME, 'Shift state')].state} and "
                f"battery {entities[(NAME, 'Battery level')].state:.0f} % are kept, not 'unknown'",
                at,
            )
            battery = entities[(NAME, "Battery level")].state

        # Home Assistant restarts: retained discovery and states, then its birth message.
        async with view().running() as ha:
            await ha.announce_online()
            entities = await ha.wait_for(shows(**{"Battery level": battery}))
            ctx.say("HA", f"restarted: {NAME} shows battery {battery:.0f} % at once", None)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(hub_task, 30)
        await producer.stop()
    published = int(registry.get_sample_value("gridmate_vehicles_mqtt_publishes_total") or 0)
    records = sum(
        int(registry.get_sample_value("gridmate_vehicles_records_total", {"type": t}) or 0)
        for t in ("V", "alerts", "errors", "connectivity")
    )
    return [
        f"{records} Fleet Telemetry records -> {published} MQTT messages (acknowledged, QoS 1)",
        "drive, charge, resend, sleep and an HA restart shown as Home Assistant reads them",
    ]


scenario = Scenario("vehicles", "Vehicles: Fleet Telemetry from Kafka to Home Assistant", _run)
