"""Demo: one car, three sources. TeslaMate serves it, loses its Tesla API access (Tesla
API polling steps in), recovers, and then Fleet Telemetry appears and takes over.

Everything is real except the car and Tesla's cloud: a TeslaMate-like publisher on a
real Mosquitto, the Tesla cloud simulator (which records every call, so the demo can
show that nothing woke the car), a real Kafka-protocol broker for Fleet Telemetry,
and the hub; Home Assistant's view is read back from the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from gridmate.demo import DemoContext, Scenario
from gridmate.homeassistant.view import HomeAssistantView
from gridmate.runtime.clock import SimulatedClock
from gridmate.runtime.secrets import Secret
from gridmate.sim.tesla_cloud import SimulatedVehicle, tesla_cloud_simulator
from gridmate.sim.teslamate import TeslaMateCarModel, simulated_teslamate
from gridmate.tesla.fleet_api import FleetApi
from gridmate.tesla.tokens import StaticTokenProvider
from gridmate.vehicles.hub import Hub
from gridmate.vehicles.settings import VehiclesSettings

NAME = "Midnight"
VIN = "7SAYGDEE9PA000007"
NAMESPACE = "demo_sources"
SPEED = 120.0


async def _run(ctx: DemoContext) -> list[str]:
    from aiokafka import AIOKafkaProducer

    from gridmate.sim.brokers import create_kafka_topics
    from gridmate.sim.fleet_telemetry import connectivity_record, telemetry_record
    from gridmate.vehicles.telemetry.kafka import topic_names

    host, port = await ctx.mqtt_broker()
    bootstrap = await ctx.kafka_broker()
    await create_kafka_topics(bootstrap, dict.fromkeys(topic_names(NAMESPACE), 1))
    clock = SimulatedClock(datetime.now(UTC).replace(hour=19, minute=0, second=0), speed=SPEED)
    cloud_car = SimulatedVehicle(vin=VIN, display_name=NAME, battery_level=47)
    cloud_car.charging_state = "Charging"
    tm_car = TeslaMateCarModel(
        1,
        VIN,
        name=NAME,
        state="charging",
        charging_state="Charging",
        battery_level=48,
        charger_power=11.0,
        charger_voltage=240,
        charger_actual_current=16.0,
        charger_phases=1,
        time_to_full_charge=2.5,
    )
    settings = VehiclesSettings(
        kafka={
            "bootstrap_servers": bootstrap,
            "namespace": NAMESPACE,
            "group_id": "demo-src",
            "static_membership": False,  # tansu has none
        },
        mqtt={"host": host, "port": port},
        homeassistant={"base_topic": "demo_src", "discovery_prefix": "ha_src", "birth_delay": 0},
        teslamate={
            "enable": True,
            "mqtt": {"host": host, "port": port},
            "namespace": "demo",
            "cars": {1: VIN},
            "use_database": False,
        },
        polling={"start_delay": 60},
        metrics={"enable": False},
    )
    said: list[str] = []

    def say(text: str) -> None:
        said.append(text)
        ctx.say("vehicles", text, clock.now())

    async with contextlib.AsyncExitStack() as stack:
        cloud = await stack.enter_async_context(
            tesla_cloud_simulator(vehicles=[cloud_car], clock=clock)
        )
        teslamate = await stack.enter_async_context(
            simulated_teslamate(host, port, [tm_car], namespace="demo", clock=clock, polling=True)
        )
        access, _refresh = cloud.issue_tokens()
        api = FleetApi(StaticTokenProvider(Secret(access)), base_url=cloud.base_url, clock=clock)
        stack.push_async_callback(api.aclose)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        await producer.start()
        stack.push_async_callback(producer.stop)
        stop = asyncio.Event()
        hub = Hub(settings, clock=clock, registry=CollectorRegistry(), stop=stop, fleet_api=api)
        task = asyncio.create_task(hub.run())

        async def stop_hub() -> None:
            stop.set()
            await asyncio.wait_for(task, 30)

        stack.push_async_callback(stop_hub)
        await asyncio.wait_for(hub.ready.wait(), 20)
        view = HomeAssistantView(host, port, discovery_prefix="ha_src", base="demo_src")
        ha = await stack.enter_async_context(view.running())

        async def shown(expected: dict[str, Any], within: float = 30.0) -> dict:
            def check(entities: dict) -> bool:
                return all(
                    (NAME, name) in entities and entities[(NAME, name)].state == value
                    for name, value in expected.items()
                )

            try:
                return await ha.wait_for(check, within)
            except TimeoutError:
                ctx.expect(False, f"Home Assistant did not show {expected}")
                raise

        entities = await shown({"Data source": "teslamate", "Battery level": 48.0})
        say(
            f"TeslaMate reports {NAME} charging at "
            f"{entities[(NAME, 'Charger power')].state:g} kW, battery 48% -> Data source: TeslaMate"
        )
        ctx.expect(not cloud.calls, "no Tesla API call while TeslaMate serves the car")
        say("Tesla API calls so far: 0 (TeslaMate polls the car anyway)")

        tm_car.healthy = False
        await teslamate.summary(1)
        say("TeslaMate publishes healthy=false (its Tesla API access is failing)")
        await shown({"Data source": "tesla_api", "Battery level": 47.0})
        reads = len(cloud.calls_to("vehicle_data"))
        say(f"Tesla API polling took over: {reads} vehicle_data read(s), battery 47%")

        tm_car.healthy = True
        await teslamate.set_state(1, "charging", battery_level=50)
        await shown({"Data source": "teslamate", "Battery level": 50.0})
        say("TeslaMate is healthy again and says 50% -> Data source: TeslaMate, polling stops")

        signals = {
            "BatteryLevel": 51.0,
            "DetailedChargeState": "Charging",
            "ACChargingPower": 11.0,
        }

        async def stream() -> None:
            # A charging car streams every few seconds; Kafka's group join may take a while.
            first = True
            while True:
                now = clock.now()
                records = [telemetry_record(NAMESPACE, VIN, now, signals)]
                if first:
                    records.insert(0, connectivity_record(NAMESPACE, VIN, now, "conn-1", True))
                    first = False
                for record in records:
                    await producer.send_and_wait(
                        record.topic, record.value, key=record.key, headers=record.headers
                    )
                await clock.sleep(30)

        streaming = asyncio.create_task(stream())
        try:
            await shown({"Data source": "fleet_telemetry", "Battery level": 51.0})
        finally:
            streaming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streaming
        say("Fleet Telemetry starts streaming 51% -> Data source: Fleet Telemetry")
        await teslamate.set_state(1, "charging", battery_level=51)
        names = {name for device, name in ha.entities() if device == NAME}
        say(f"Home Assistant: still one device '{NAME}' with the same {len(names)} entities")

        # Charging completes and the car goes to sleep: both sources fall silent.
        done = clock.now()
        for record in (
            telemetry_record(NAMESPACE, VIN, done, {"DetailedChargeState": "Complete"}),
            connectivity_record(NAMESPACE, VIN, done, "conn-1", False),
        ):
            await producer.send_and_wait(
                record.topic, record.value, key=record.key, headers=record.headers
            )
        await teslamate.set_state(1, "asleep", charging_state="Complete", charger_power=None)
        cloud_car.state = "asleep"
        await shown({"Data source": "fleet_telemetry", "Charging state": "complete"})
        calls = len(cloud.calls)
        await clock.sleep(1200)
        ctx.expect(len(cloud.calls) == calls, "no Tesla API call while the car sleeps")
        ctx.expect(cloud_car.wakes == 0, "the car was never woken")
        say(
            f"the car sleeps; 20 minutes later: still {len(cloud.calls)} Tesla API calls "
            f"in all, {cloud_car.wakes} wake-ups"
        )
    return [
        "TeslaMate -> Tesla API polling (healthy=false) -> TeslaMate -> Fleet Telemetry",
        f"{reads} vehicle_data read(s) in all, no wake-ups",
    ]


scenario = Scenario(
    "vehicle-sources", "Vehicles: TeslaMate, Tesla API polling, Fleet Telemetry", _run
)
