"""Car controls: the Charging control switch, through the Fleet API and Tesla's
vehicle-command proxy simulators (signed commands, budgets, sleeping cars)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from gridmate.runtime.secrets import Secret
from gridmate.sim.command_proxy import command_proxy_simulator
from gridmate.sim.fleet_telemetry import sample_vin
from gridmate.sim.tesla_cloud import SimulatedVehicle, tesla_cloud_simulator
from gridmate.tesla.settings import TeslaCloudSettings, build_fleet_api
from gridmate.tesla.tokens import StaticTokenProvider
from gridmate.vehicles.catalogue import invalid_policies
from gridmate.vehicles.homeassistant.controls import (
    COMMAND_ERROR_FIELD,
    VehicleControls,
    command_topic,
    parse_command_topic,
)
from gridmate.vehicles.homeassistant.discovery import Topics, discovery_document
from gridmate.vehicles.settings import VehiclesSettings
from gridmate.vehicles.state import StateStore

VIN = sample_vin(3)
START = datetime(2026, 7, 1, 18, 0, tzinfo=UTC)


class StepClock:
    def __init__(self, start: datetime) -> None:
        self.moment = start

    def now(self) -> datetime:
        return self.moment

    async def sleep(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)
        await asyncio.sleep(0)


class Rig:
    def __init__(self, cloud, proxy, clock, *, budget=200, wake_vins=()) -> None:
        access, _ = cloud.issue_tokens()
        # Configured as a user would: Fleet API tokens and the command proxy.
        tesla = TeslaCloudSettings(
            base_url=cloud.base_url,
            command_proxy_url=proxy.base_url,
            command_proxy_ca_file=proxy.ca_file,
            daily_vehicle_budget=budget,
        )
        self.fleet = build_fleet_api(
            tesla, StaticTokenProvider(Secret(access)), clock=clock, registry=None
        )
        self.store = StateStore(invalid_policies())
        self.changed: list[list[str]] = []
        self.controls = VehicleControls(
            self.fleet, self.store, "gm", clock=clock,
            on_change=lambda applied: self.changed.append(applied.changed), wake_vins=wake_vins,
        )  # fmt: skip

    def knows(self, online: bool) -> None:
        self.store.update(VIN, "online", online, START.timestamp(), "teslamate")

    def error(self) -> str | None:
        state = self.store.get(VIN)
        return None if state is None else state.value(COMMAND_ERROR_FIELD)


def plugged_car(**overrides) -> SimulatedVehicle:
    fields = {"vin": VIN, "state": "online", "charging_state": "Stopped",
              "battery_level": 50.0, "command_signing_required": True}  # fmt: skip
    fields.update(overrides)
    return SimulatedVehicle(**fields)


async def test_the_switch_starts_and_stops_charging_through_the_command_proxy():
    car = plugged_car()
    clock = StepClock(START)
    async with (
        tesla_cloud_simulator(vehicles=[car], clock=clock) as cloud,
        command_proxy_simulator(cloud) as proxy,
    ):
        rig = Rig(cloud, proxy, clock)
        rig.knows(online=True)
        assert await rig.controls.charge(VIN, True)
        assert car.charging_state == "Charging" and car.signed_commands == 1
        assert await rig.controls.charge(VIN, False)
        assert car.charging_state == "Stopped"
        assert rig.error() is None
        await rig.fleet.aclose()


async def test_a_sleeping_car_is_not_woken_and_the_refusal_is_visible():
    car = plugged_car(state="asleep")
    clock = StepClock(START)
    async with (
        tesla_cloud_simulator(vehicles=[car], clock=clock) as cloud,
        command_proxy_simulator(cloud) as proxy,
    ):
        rig = Rig(cloud, proxy, clock)
        rig.knows(online=False)
        assert not await rig.controls.charge(VIN, True)
        assert car.wakes == 0 and cloud.calls_to("wake_up") == [] and car.commands == []
        assert "does not wake it" in (rig.error() or "")
        assert rig.changed == [[COMMAND_ERROR_FIELD]]
        await rig.fleet.aclose()


async def test_a_car_allowed_to_wake_is_woken_then_commanded():
    car = plugged_car(state="asleep")
    clock = StepClock(START)
    async with (
        tesla_cloud_simulator(vehicles=[car], clock=clock) as cloud,
        command_proxy_simulator(cloud) as proxy,
    ):
        rig = Rig(cloud, proxy, clock, wake_vins=[VIN])
        rig.knows(online=False)
        assert await rig.controls.charge(VIN, True)
        assert car.wakes == 1 and car.charging_state == "Charging"
        await rig.fleet.aclose()


async def test_a_used_up_command_budget_refuses_clearly():
    car = plugged_car()
    clock = StepClock(START)
    async with (
        tesla_cloud_simulator(vehicles=[car], clock=clock) as cloud,
        command_proxy_simulator(cloud) as proxy,
    ):
        rig = Rig(cloud, proxy, clock, budget=1)
        rig.knows(online=True)
        assert await rig.controls.charge(VIN, True)
        assert not await rig.controls.charge(VIN, False)
        assert car.charging_state == "Charging"  # nothing was sent
        assert "budget" in (rig.error() or "")
        await rig.fleet.aclose()


def test_payloads_and_topics_are_validated(caplog):
    assert parse_command_topic("gm", command_topic("gm", VIN, "charging")) == (VIN, "charging")
    assert parse_command_topic("gm", f"gm/{VIN}/state") is None
    store = StateStore(invalid_policies())
    store.update(VIN, "online", True, START.timestamp(), "teslamate")
    noted: list[list[str]] = []
    controls = VehicleControls(
        None, store, "gm", clock=StepClock(START), on_change=lambda a: noted.append(a.changed)
    )  # type: ignore[arg-type]
    controls.handle(command_topic("gm", VIN, "charging"), b"maybe")
    assert "neither ON nor OFF" in store.get(VIN).value(COMMAND_ERROR_FIELD)


def test_the_switch_is_announced_only_with_a_command_path():
    from gridmate.vehicles.state import VehicleState

    state = VehicleState(VIN)
    plain = discovery_document(VIN, state, Topics("gm"), {})
    assert f"{VIN}_charging_control" not in plain["cmps"]
    controlled = discovery_document(VIN, state, Topics("gm"), {}, controls=True)
    switch = controlled["cmps"][f"{VIN}_charging_control"]
    assert switch["cmd_t"] == f"gm/{VIN}/set/charging"
    assert (switch["stat_on"], switch["stat_off"]) == ("True", "False")
    with pytest.raises(ValueError, match="command path"):
        VehiclesSettings(teslamate={"enable": True, "cars": {1: VIN}, "use_database": False},
                         controls={"enable": True})  # fmt: skip
    json.dumps(controlled)


async def test_a_command_from_home_assistant_reaches_the_car(mqtt_broker):
    import aiomqtt

    from gridmate.runtime.settings import MqttSettings
    from gridmate.vehicles.homeassistant.controls import command_filter
    from gridmate.vehicles.homeassistant.link import MqttLink

    car = plugged_car()
    clock = StepClock(START)
    base = mqtt_broker.topic_prefix()
    async with (
        tesla_cloud_simulator(vehicles=[car], clock=clock) as cloud,
        command_proxy_simulator(cloud) as proxy,
    ):
        rig = Rig(cloud, proxy, clock)
        rig.controls.base = base
        rig.knows(online=True)
        stop = asyncio.Event()
        link = MqttLink(
            MqttSettings(host=mqtt_broker.host, port=mqtt_broker.port),
            Topics(base, f"{base}-ha", "gridmate"),
            stop=stop,
            command_topics=[command_filter(base)],
            on_command=rig.controls.handle,
        )
        task = asyncio.create_task(link.run())
        try:
            await asyncio.wait_for(link.connected.wait(), 10)
            async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as home_assistant:
                await home_assistant.publish(command_topic(base, VIN, "charging"), b"ON", qos=1)
            async with asyncio.timeout(10):
                while car.charging_state != "Charging":
                    await asyncio.sleep(0.01)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            await rig.controls.close()
            await rig.fleet.aclose()
