"""Car state for EV pausing from the vehicles hub's retained MQTT documents.

The documents are made by the hub's own publisher from its state store, so the
energy manager reads exactly what the hub publishes; the Fleet API (the Tesla
cloud simulator) is the fallback and must not be asked while the hub's state is
fresh.
"""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime, timedelta

import aiomqtt
import pytest

from gridmate.energy.adapters.vehicles import FleetVehicles, MqttVehicles, reading_from_state
from gridmate.energy.planner import VehicleReading
from gridmate.energy.settings import EvSettings
from gridmate.runtime.clock import SimulatedClock
from gridmate.runtime.secrets import Secret
from gridmate.runtime.settings import MqttSettings
from gridmate.sim.command_proxy import command_proxy_simulator
from gridmate.sim.tesla_cloud import SimulatedVehicle, tesla_cloud_simulator
from gridmate.tesla.fleet_api import FleetApi
from gridmate.tesla.tokens import StaticTokenProvider
from gridmate.vehicles.homeassistant.discovery import Topics
from gridmate.vehicles.homeassistant.publisher import Publisher
from gridmate.vehicles.state import StateStore

NOW = datetime(2026, 7, 1, 23, 0, tzinfo=UTC)
HOME = (37.4925, -121.9447)
VIN = "5YJ3E1EA7KF000001"


def ev(**changes) -> EvSettings:
    values = {"enable": True, "home_latitude": HOME[0], "home_longitude": HOME[1]}
    values.update(changes)
    return EvSettings(**values)


def hub_messages(base: str, vin: str, at: datetime, *, charging: bool, where=HOME) -> list:
    """What the vehicles hub publishes for a car, made by the hub's own code."""
    store = StateStore()
    when = at.timestamp()
    store.update(vin, "charge_state", "charging" if charging else "stopped", when, "telemetry")
    store.update(vin, "ac_charging_power_kw", 7.7 if charging else 0.0, when, "telemetry")
    store.update(vin, "location", where, when, "telemetry")
    publisher = Publisher(
        store, Topics(base=base, discovery_prefix=f"{base}/discovery"), {}, now=lambda: when
    )
    publisher.mark_vehicles([vin])
    return publisher.take().messages


def document(messages, vin: str) -> dict:
    import json

    (state,) = [m for m in messages if m.topic.endswith(f"{vin}/state")]
    return json.loads(state.payload)


# ---------------------------------------------------------------- the document (pure)


def test_a_fresh_document_says_charging_at_home_with_its_power():
    doc = document(hub_messages("gridmate", VIN, NOW, charging=True), VIN)
    assert reading_from_state(doc, ev(), now=NOW + timedelta(minutes=2)) == VehicleReading(
        charging=True, at_home=True, charge_power_kw=7.7
    )
    away = document(hub_messages("gridmate", VIN, NOW, charging=True, where=(37.0, -122.0)), VIN)
    assert reading_from_state(away, ev(), now=NOW).at_home is False  # type: ignore[union-attr]


def test_an_old_document_or_one_from_before_a_command_is_not_trusted():
    doc = document(hub_messages("gridmate", VIN, NOW, charging=True), VIN)
    assert reading_from_state(doc, ev(), now=NOW + timedelta(minutes=31)) is None
    assert reading_from_state(doc, ev(max_age_minutes=60), now=NOW + timedelta(minutes=31))
    assert reading_from_state(doc, ev(), now=NOW, not_before=NOW + timedelta(seconds=1)) is None
    unknown = {**doc, "charging": None}
    assert reading_from_state(unknown, ev(), now=NOW) is None


def test_the_base_topic_is_checked():
    with pytest.raises(ValueError, match="topic prefix"):
        ev(base_topic="gridmate/#")


# ---------------------------------------------------------------- against Mosquitto


@pytest.mark.services
async def test_states_come_from_the_broker_and_the_fleet_api_only_as_fallback(mqtt_broker):
    base = f"{mqtt_broker.topic_prefix()}/gridmate"
    clock = SimulatedClock(NOW)
    car = SimulatedVehicle(vin=VIN, charging_state="Charging")
    messages = hub_messages(base, VIN, clock.now(), charging=True)
    async with (
        tesla_cloud_simulator(vehicles=[car], clock=clock) as cloud,
        command_proxy_simulator(cloud) as proxy,
        aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as client,
    ):
        for message in messages:
            await client.publish(message.topic, message.payload, qos=1, retain=True)
        settings = ev(
            state_source="mqtt",
            mqtt=MqttSettings(host=mqtt_broker.host, port=mqtt_broker.port),
            base_topic=base,
        )
        access, _ = cloud.issue_tokens()
        fleet = FleetApi(
            StaticTokenProvider(Secret(access)),
            base_url=cloud.base_url,
            clock=clock,
            command_base_url=proxy.base_url,  # a Model 3: commands are signed
            verify=ssl.create_default_context(cafile=str(proxy.ca_file)),
        )
        source = MqttVehicles(settings, FleetVehicles(fleet, settings, clock=clock), clock=clock)
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(stop))
        try:
            await asyncio.wait_for(source.connected.wait(), 10)
            for _ in range(200):  # retained messages arrive right after subscribing
                if VIN in source.documents:
                    break
                await asyncio.sleep(0.02)
            assert await source.read() == {VIN: VehicleReading(True, True, 7.7)}
            assert cloud.calls == []  # no Tesla call at all

            # The hub publishes the stop a moment after gridmate's command.
            assert await source.command(VIN, "stopped") is True
            assert car.charging_state == "Stopped"
            reading = await source.read()  # the document predates the command: ask Tesla
            assert reading[VIN].charging is False
            assert len(cloud.calls_to("vehicle_data", vin=VIN)) == 1
            clock.jump_to(clock.now() + timedelta(seconds=20))
            for message in hub_messages(base, VIN, clock.now(), charging=False):
                await client.publish(message.topic, message.payload, qos=1, retain=True)
            for _ in range(200):
                if source.documents[VIN]["charging"] is False:
                    break
                await asyncio.sleep(0.02)
            assert (await source.read())[VIN].charging is False
            assert len(cloud.calls_to("vehicle_data", vin=VIN)) == 1  # from the hub again

            # The hub went quiet for longer than max_age: the Fleet API answers.
            clock.jump_to(clock.now() + timedelta(minutes=45))
            # Nobody read its data for 45 minutes: the car fell asleep, and the vehicle
            # list says so without waking it.
            assert (await source.read())[VIN] == VehicleReading(False, False, asleep=True)
            assert len(cloud.calls_to("vehicle_data", vin=VIN)) == 1
            assert car.state == "asleep" and car.wakes == 0
            assert car.naps == 1 and car.signed_commands == 1
        finally:
            stop.set()
            await task
            await fleet.aclose()
            for message in messages:  # leave the shared broker clean
                await client.publish(message.topic, b"", qos=1, retain=True)
