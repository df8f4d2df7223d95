"""Car controls: charging switch, charge limit and charging current numbers, climate
switch, through the Fleet API and Tesla's vehicle-command proxy simulators (signed
commands, budgets, sleeping cars), and end to end from Home Assistant's side of a real
Mosquitto through the hub and through a ``gridmate vehicles run`` process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from prometheus_client import CollectorRegistry

from gridmate.homeassistant.view import HomeAssistantView
from gridmate.runtime.clock import SimulatedClock
from gridmate.runtime.secrets import Secret
from gridmate.runtime.settings import MqttSettings
from gridmate.sim.command_proxy import command_proxy_simulator
from gridmate.sim.fleet_telemetry import sample_vin
from gridmate.sim.tesla_cloud import SimulatedVehicle, tesla_cloud_simulator
from gridmate.sim.teslamate import TeslaMateCarModel, clear_retained, simulated_teslamate
from gridmate.tesla.settings import TeslaCloudSettings, build_fleet_api
from gridmate.tesla.tokens import StaticTokenProvider
from gridmate.vehicles.catalogue import invalid_policies
from gridmate.vehicles.homeassistant.controls import (
    CHARGING_CONTROLS,
    COMMAND_ERROR_FIELD,
    CONTROLS,
    VehicleControls,
    command_filter,
    command_topic,
    enabled_controls,
    parse_command_topic,
)
from gridmate.vehicles.homeassistant.discovery import Topics, discovery_document
from gridmate.vehicles.homeassistant.link import MqttLink
from gridmate.vehicles.homeassistant.publisher import Publisher
from gridmate.vehicles.hub import Hub
from gridmate.vehicles.settings import VehiclesSettings
from gridmate.vehicles.state import Applied, StateStore, VehicleState

VIN = sample_vin(3)
NAME = "Blue"
START = datetime(2026, 7, 1, 18, 0, tzinfo=UTC)
ALL_CONTROLS = enabled_controls(climate=True)


class StepClock:
    def __init__(self, start: datetime) -> None:
        self.moment = start

    def now(self) -> datetime:
        return self.moment

    async def sleep(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)
        await asyncio.sleep(0)


class Rig:
    def __init__(
        self, cloud, proxy, clock, *, budget=200, wake_vins=(), enabled=ALL_CONTROLS
    ) -> None:
        self.cloud = cloud
        access, _ = cloud.issue_tokens()
        # Configured as a user would: Fleet API tokens and the command proxy.
        tesla = TeslaCloudSettings(
            base_url=cloud.base_url,
            command_proxy_url=proxy.base_url if proxy else None,
            command_proxy_ca_file=proxy.ca_file if proxy else None,
            daily_vehicle_budget=budget,
        )
        self.fleet = build_fleet_api(
            tesla, StaticTokenProvider(Secret(access)), clock=clock, registry=None
        )
        self.store = StateStore(invalid_policies())
        self.changed: list[list[str]] = []
        self.done: list[str] = []
        self.controls = VehicleControls(
            self.fleet, self.store, "gm", clock=clock,
            on_change=lambda applied: self.changed.append(applied.changed),
            wake_vins=wake_vins, enabled=enabled, after_command=self.done.append,
        )  # fmt: skip

    def knows(self, online: bool = True, **fields: Any) -> None:
        """What a source (TeslaMate, say) reported about the car."""
        for key, value in {"online": online, **fields}.items():
            self.store.update(VIN, key, value, START.timestamp(), "teslamate")

    def error(self) -> str | None:
        state = self.store.get(VIN)
        return None if state is None else state.value(COMMAND_ERROR_FIELD)

    def send(self, key: str, payload: bytes) -> None:
        """A command as Home Assistant sends it (carried out in the background)."""
        self.controls.handle(command_topic("gm", VIN, key), payload)

    async def command(self, key: str, payload: bytes) -> bool:
        """A command as Home Assistant sends it, validated and carried out."""
        state = self.store.get(VIN)
        assert state is not None
        value = VehicleControls.validate(CONTROLS[key], state, payload)
        return await self.controls.command(VIN, key, value)


def plugged_car(**overrides: Any) -> SimulatedVehicle:
    fields = {"vin": VIN, "state": "online", "charging_state": "Stopped",
              "battery_level": 50, "command_signing_required": True}  # fmt: skip
    fields.update(overrides)
    return SimulatedVehicle(**fields)


@contextlib.asynccontextmanager
async def cloud_with(car: SimulatedVehicle, *, proxy: bool = True) -> AsyncIterator[Any]:
    clock = StepClock(START)
    async with tesla_cloud_simulator(vehicles=[car], clock=clock) as cloud:
        if not proxy:
            yield cloud, None, clock
            return
        async with command_proxy_simulator(cloud) as stand_in:
            yield cloud, stand_in, clock


# ---------------------------------------------------------------- commands


async def test_each_control_acts_on_the_car_through_the_command_proxy():
    car = plugged_car()
    async with cloud_with(car) as (cloud, proxy, clock):
        rig = Rig(cloud, proxy, clock)
        rig.knows(charge_current_request_max_a=32)
        for key, payload in (
            ("charge_limit", b"90"), ("charging_amps", b"16"), ("climate", b"ON"),
            ("charging", b"ON"),
        ):  # fmt: skip
            assert await rig.command(key, payload)
        assert (car.charge_limit_soc, car.charge_amps, car.climate_on) == (90, 16, True)
        assert car.charging_state == "Charging"
        assert await rig.command("charging", b"OFF")
        assert await rig.command("climate", b"OFF")
        await rig.fleet.aclose()
    assert car.charging_state == "Stopped" and car.climate_on is False
    assert [(c[1], p) for c, p in zip(car.commands, car.command_parameters, strict=True)] == [
        ("set_charge_limit", {"percent": 90}),
        ("set_charging_amps", {"charging_amps": 16}),
        ("auto_conditioning_start", {}),
        ("charge_start", {}),
        ("charge_stop", {}),
        ("auto_conditioning_stop", {}),
    ]
    assert car.signed_commands == 6 and cloud.calls_to("command") == []
    assert rig.error() is None
    assert rig.done == [VIN] * 6  # each success asks the serving source to read the car


async def test_the_cars_own_refusal_is_visible():
    # TeslaMate does not report the car's charge limit bounds; this car's top is 90 %.
    car = plugged_car(charge_limit_soc_max=90)
    async with cloud_with(car) as (cloud, proxy, clock):
        rig = Rig(cloud, proxy, clock)
        rig.knows()
        assert not await rig.controls.command(VIN, "charge_limit", 95)
        assert rig.error() == "set_charge_limit: the car refused (invalid_charge_limit)"
        # Tesla's "already_set" means the car is as asked: a success, not an error.
        assert await rig.controls.command(VIN, "charge_limit", 80)
        assert rig.error() is None
        await rig.fleet.aclose()
    assert car.charge_limit_soc == 80


@pytest.mark.parametrize(
    ("key", "payload", "reason"),
    [
        ("charge_limit", b"45", "charge_limit: 45 is outside 50..90"),
        ("charge_limit", b"101", "charge_limit: 101 is outside 50..90"),
        ("charge_limit", b"80.5", "charge_limit: 80.5 is not a multiple of 1"),
        ("charge_limit", b"lots", "charge_limit: 'lots' is not a number"),
        ("charge_limit", b"95", "charge_limit: 95 is outside 50..90"),  # the car's own top
        ("charging_amps", b"33", "charging_amps: 33 is outside 1..32"),
        ("charging_amps", b"0", "charging_amps: 0 is outside 1..32"),
        ("charging", b"maybe", "charging: 'maybe' is neither ON nor OFF"),
        ("climate", b"1", "climate: '1' is neither ON nor OFF"),
    ],
)
async def test_a_value_out_of_range_is_refused_before_anything_is_sent(key, payload, reason):
    car = plugged_car()
    async with cloud_with(car) as (cloud, proxy, clock):
        rig = Rig(cloud, proxy, clock)
        rig.knows(charge_limit_soc_max=90, charge_current_request_max_a=32)
        rig.send(key, payload)
        assert rig.error() == reason
        # The same refusal again still publishes the car's state: Home Assistant's
        # entity snaps back to the value in effect.
        rig.send(key, payload)
        assert rig.changed == [[COMMAND_ERROR_FIELD]] * 2
        await rig.controls.close()
        await rig.fleet.aclose()
    assert cloud.calls == [] and car.commands == []


async def test_charging_current_is_refused_while_the_car_has_not_reported_its_maximum():
    car = plugged_car()
    async with cloud_with(car) as (cloud, proxy, clock):
        rig = Rig(cloud, proxy, clock)
        rig.knows()
        rig.send("charging_amps", b"16")
        await rig.controls.close()
        await rig.fleet.aclose()
    assert "has not reported its maximum charging current" in (rig.error() or "")
    assert cloud.calls == []


async def test_climate_is_refused_unless_enabled():
    car = plugged_car()
    async with cloud_with(car) as (cloud, proxy, clock):
        rig = Rig(cloud, proxy, clock, enabled=CHARGING_CONTROLS)
        rig.knows()
        rig.send("climate", b"ON")
        await rig.controls.close()
        await rig.fleet.aclose()
    assert rig.error() == "Climate control is not enabled (controls.climate is off)"
    assert cloud.calls == [] and car.climate_on is False


async def test_a_sleeping_car_is_not_woken_and_the_refusal_is_visible():
    car = plugged_car(state="asleep")
    async with cloud_with(car) as (cloud, proxy, clock):
        rig = Rig(cloud, proxy, clock)
        rig.knows(online=False)
        assert not await rig.controls.command(VIN, "charge_limit", 90)
        assert not await rig.controls.command(VIN, "climate", True)
        await rig.fleet.aclose()
    assert car.wakes == 0 and cloud.calls_to("wake_up") == [] and car.commands == []
    assert "does not wake it" in (rig.error() or "")
    assert rig.changed == [[COMMAND_ERROR_FIELD]] * 2


async def test_a_car_allowed_to_wake_is_woken_once_for_two_commands():
    car = plugged_car(state="asleep")
    async with cloud_with(car) as (cloud, proxy, clock):
        rig = Rig(cloud, proxy, clock, wake_vins=[VIN])
        rig.knows(online=False, charge_current_request_max_a=32)
        # Two commands at once: the second waits for the first one's wake.
        done = await asyncio.gather(rig.command("charge_limit", b"90"),
                                    rig.command("charging_amps", b"20"))  # fmt: skip
        await rig.fleet.aclose()
    assert done == [True, True]
    assert car.wakes == 1
    assert (car.charge_limit_soc, car.charge_amps) == (90, 20)
    assert rig.error() is None


async def test_a_used_up_command_budget_refuses_clearly():
    car = plugged_car()
    async with cloud_with(car) as (cloud, proxy, clock):
        rig = Rig(cloud, proxy, clock, budget=1)
        rig.knows()
        assert await rig.controls.command(VIN, "charge_limit", 90)
        assert not await rig.controls.command(VIN, "charge_limit", 70)
        await rig.fleet.aclose()
    assert car.charge_limit_soc == 90  # nothing was sent
    assert rig.error() == (
        f"set_charge_limit: daily request budget for vehicle {VIN} is used up (1/1)"
    )


async def test_a_wake_is_not_spent_when_the_budget_cannot_cover_the_command_too():
    car = plugged_car(state="asleep")
    async with cloud_with(car) as (cloud, proxy, clock):
        rig = Rig(cloud, proxy, clock, budget=1, wake_vins=[VIN])
        rig.knows(online=False)
        assert not await rig.controls.command(VIN, "climate", True)
        await rig.fleet.aclose()
    assert car.wakes == 0 and cloud.calls == []
    assert "a wake and the command need 2" in (rig.error() or "")


async def test_without_the_proxy_a_car_that_needs_signing_refuses_every_control():
    car = plugged_car()
    async with cloud_with(car, proxy=False) as (cloud, proxy, clock):
        rig = Rig(cloud, proxy, clock)
        rig.knows(charge_current_request_max_a=32)
        for key, value in (("charge_limit", 90), ("charging_amps", 16), ("climate", True)):
            assert not await rig.controls.command(VIN, key, value)
            assert "Tesla Vehicle Command Protocol required" in (rig.error() or "")
        await rig.fleet.aclose()
    assert car.commands == [] and (car.charge_limit_soc, car.climate_on) == (80, False)
    assert {c.status for c in cloud.calls} == {403}


def test_command_topics_are_parsed_strictly():
    assert parse_command_topic("gm", command_topic("gm", VIN, "charge_limit")) == (
        VIN,
        "charge_limit",
    )
    assert parse_command_topic("gm", f"gm/{VIN}/state") is None
    assert parse_command_topic("gm", f"gm/{VIN}/set/charge_limit/x") is None
    assert parse_command_topic("gm", f"other/{VIN}/set/charging") is None


# ---------------------------------------------------------------- discovery


def car_state(**fields: Any) -> VehicleState:
    store = StateStore(invalid_policies())
    for key, value in fields.items():
        store.update(VIN, key, value, START.timestamp(), "tesla_api")
    return store.vehicle(VIN)


def control_entities(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {key: c for key, c in document["cmps"].items() if "cmd_t" in c}


def test_no_command_path_no_control_entities():
    plain = discovery_document(VIN, car_state(charge_current_request_max_a=32), Topics("gm"), {})
    assert control_entities(plain) == {}
    with pytest.raises(ValueError, match="command path"):
        VehiclesSettings(teslamate={"enable": True, "cars": {1: VIN}, "use_database": False},
                         controls={"enable": True})  # fmt: skip


def test_number_controls_carry_range_step_unit_mode_and_class():
    state = car_state(
        charge_limit_soc=80, charge_limit_soc_min=50, charge_limit_soc_max=100,
        charge_current_request_a=16, charge_current_request_max_a=48,
    )  # fmt: skip
    document = discovery_document(VIN, state, Topics("gm"), {}, controls=ALL_CONTROLS)
    json.dumps(document)
    controls = control_entities(document)
    assert set(controls) == {f"{VIN}_{key}_control" for key in ALL_CONTROLS}
    limit = controls[f"{VIN}_charge_limit_control"]
    assert limit["p"] == "number" and limit["cmd_t"] == f"gm/{VIN}/set/charge_limit"
    assert (limit["min"], limit["max"], limit["step"], limit["mode"]) == (50, 100, 1, "slider")
    assert (limit["unit_of_meas"], limit["dev_cla"]) == ("%", "battery")
    assert limit["val_tpl"] == "{{ value_json.charge_limit_soc }}"
    amps = controls[f"{VIN}_charging_amps_control"]
    assert (amps["min"], amps["max"], amps["step"], amps["mode"]) == (1, 48, 1, "slider")
    assert (amps["unit_of_meas"], amps["dev_cla"]) == ("A", "current")
    assert amps["val_tpl"] == "{{ value_json.charge_current_request_a }}"
    climate = controls[f"{VIN}_climate_control"]
    assert climate["p"] == "switch" and climate["cmd_t"] == f"gm/{VIN}/set/climate"
    assert (climate["stat_on"], climate["stat_off"]) == ("True", "False")
    assert climate["val_tpl"] == "{{ value_json.climate_on }}"
    charging = controls[f"{VIN}_charging_control"]
    assert charging["val_tpl"] == "{{ value_json.charging }}"


def test_ranges_follow_the_car_and_take_in_its_current_value():
    # Nothing reported: Tesla's charge limit range, and no charging current control
    # (its maximum is the car's and the charger's, not a guess).
    bare = control_entities(discovery_document(VIN, car_state(), Topics("gm"), {},
                                               controls=CHARGING_CONTROLS))  # fmt: skip
    assert set(bare) == {f"{VIN}_charging_control", f"{VIN}_charge_limit_control"}
    limit = bare[f"{VIN}_charge_limit_control"]
    assert (limit["min"], limit["max"]) == (50, 100)
    # A current request above the charger's reported maximum stays inside the range,
    # or Home Assistant would drop the state as invalid.
    state = car_state(charge_current_request_a=32, charge_current_request_max_a=16,
                      charge_limit_soc=80, charge_limit_soc_max=90)  # fmt: skip
    controls = control_entities(discovery_document(VIN, state, Topics("gm"), {},
                                                   controls=CHARGING_CONTROLS))  # fmt: skip
    amps = controls[f"{VIN}_charging_amps_control"]
    assert (amps["min"], amps["max"]) == (1, 32)
    assert controls[f"{VIN}_charge_limit_control"]["max"] == 90


def test_discovery_is_sent_again_when_a_range_changes():
    store = StateStore(invalid_policies())
    publisher = Publisher(store, Topics("gm"), {}, now=lambda: 0.0, controls=CHARGING_CONTROLS)

    def report(**fields: Any) -> list[dict[str, Any]]:
        changed = []
        for key, value in fields.items():
            store.update(VIN, key, value, START.timestamp(), "tesla_api")
            changed.append(key)
        publisher.mark(Applied(VIN, changed))
        return [
            json.loads(m.payload) for m in publisher.take().messages if m.topic.endswith("/config")
        ]

    assert report(battery_level=50, charge_limit_soc=80, charge_current_request_a=16)
    first = report(charge_current_request_max_a=32)
    assert control_entities(first[0])[f"{VIN}_charging_amps_control"]["max"] == 32
    second = report(charge_current_request_max_a=48)
    assert control_entities(second[0])[f"{VIN}_charging_amps_control"]["max"] == 48
    assert report(charge_current_request_a=20) == []  # inside the range: nothing to announce
    assert report(battery_level=51) == []


# ---------------------------------------------------------------- end to end


@pytest.mark.services
async def test_home_assistant_steers_the_car_end_to_end(mqtt_broker):
    """Home Assistant's side of a real Mosquitto sends each control's command; the hub
    (polling as the car's only source) has the proxy sign it, the simulated car does it,
    and the entity shows the car's new value from the next poll."""
    prefix = mqtt_broker.topic_prefix()
    base, discovery = f"{prefix}gm", f"{prefix}ha"
    car = plugged_car(display_name=NAME, sleep_after=None, charge_current_request_max=32)
    clock = SimulatedClock(datetime.now(UTC), speed=30)
    async with (
        tesla_cloud_simulator(vehicles=[car], clock=clock) as cloud,
        command_proxy_simulator(cloud) as proxy,
        aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as someone,
    ):
        # A command left retained on the broker before gridmate started: never obeyed.
        await someone.publish(command_topic(base, VIN, "charge_limit"), b"55", qos=1, retain=True)
        settings = VehiclesSettings(
            mqtt={"host": mqtt_broker.host, "port": mqtt_broker.port},
            homeassistant={"base_topic": base, "discovery_prefix": discovery, "birth_delay": 0},
            tesla={"token_source": "oauth", "oauth": {"client_id": "gridmate-sim-client"},
                   "base_url": cloud.base_url, "command_proxy_url": proxy.base_url,
                   "command_proxy_ca_file": proxy.ca_file},
            # Polled once an hour: only the read a command asks for shows its effect soon.
            polling={"start_delay": 0, "idle_interval": 3600, "active_interval": 3600},
            controls={"enable": True, "climate": True},
            metrics={"enable": False},
        )  # fmt: skip
        access, _ = cloud.issue_tokens()
        fleet = build_fleet_api(
            settings.tesla, StaticTokenProvider(Secret(access)), clock=clock, registry=None
        )
        stop = asyncio.Event()
        hub = Hub(settings, clock=clock, registry=CollectorRegistry(), stop=stop, fleet_api=fleet)
        task = asyncio.create_task(hub.run())
        view = HomeAssistantView(
            mqtt_broker.host, mqtt_broker.port, discovery_prefix=discovery, base=base
        )
        try:
            async with view.running() as ha:

                def shows(**expected: Any):
                    return lambda entities: all(
                        (NAME, name) in entities and entities[(NAME, name)].state == value
                        for name, value in expected.items()
                    )

                await ha.wait_for(shows(**{
                    "Charging control": "off", "Charge limit control": 80.0,
                    "Charging current control": 32.0, "Climate control": "off",
                }), 60)  # fmt: skip
                limit = ha.entities()[(NAME, "Charge limit control")].config
                assert (limit["min"], limit["max"], limit["unit_of_measurement"]) == (50, 100, "%")
                amps = ha.entities()[(NAME, "Charging current control")].config
                assert (amps["min"], amps["max"], amps["device_class"]) == (1, 32, "current")

                await ha.command(NAME, "Charge limit control", "90")
                await ha.wait_for(shows(**{"Charge limit control": 90.0}), 30)
                await ha.command(NAME, "Charging current control", "16")
                await ha.wait_for(shows(**{"Charging current control": 16.0}), 30)
                await ha.command(NAME, "Climate control", "ON")
                await ha.wait_for(shows(**{"Climate control": "on"}), 30)
                await ha.command(NAME, "Charging control", "ON")
                await ha.wait_for(shows(**{"Charging control": "on"}), 30)

                # Out of range: refused with the reason shown; the car keeps its limit.
                await ha.command(NAME, "Charge limit control", "45")
                await ha.wait_for(
                    shows(**{"Last command error": "charge_limit: 45 is outside 50..100"}), 30
                )
                assert ha.value(NAME, "Charge limit control") == 90.0
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
            await fleet.aclose()
            await someone.publish(command_topic(base, VIN, "charge_limit"), b"", retain=True)
    assert (car.charge_limit_soc, car.charge_amps, car.climate_on) == (90, 16, True)
    assert [p for c, p in zip(car.commands, car.command_parameters, strict=True)
            if c[1] == "set_charge_limit"] == [{"percent": 90}]  # fmt: skip
    assert car.signed_commands == 4 and cloud.calls_to("wake_up") == []


@pytest.mark.services
async def test_a_command_from_home_assistant_reaches_the_car(mqtt_broker):
    car = plugged_car()
    base = mqtt_broker.topic_prefix()
    async with cloud_with(car) as (cloud, proxy, clock):
        rig = Rig(cloud, proxy, clock)
        rig.controls.base = base
        rig.knows()
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


def controls_daemon_config(
    directory: Path, broker: Any, prefix: str, cloud: Any, proxy: Any, token_file: Path
) -> str:
    """``gridmate vehicles run`` as a user configures car controls on TeslaMate alone:
    polling off, tokens from gridmate's own Tesla login, Tesla's command proxy."""
    return f"""
state_directory = "{directory / "state"}"
runtime_directory = "{directory / "run"}"
[metrics]
enable = false
[mqtt]
host = "{broker.host}"
port = {broker.port}
[homeassistant]
base_topic = "{prefix}gm"
discovery_prefix = "{prefix}ha"
birth_delay = 0
[teslamate]
enable = true
namespace = "{prefix}"
use_database = false
cars = {{ 1 = "{VIN}" }}
[teslamate.mqtt]
host = "{broker.host}"
port = {broker.port}
[tesla]
token_source = "oauth"
base_url = "{cloud.base_url}"
command_proxy_url = "{proxy.base_url}"
command_proxy_ca_file = "{proxy.ca_file}"
[tesla.oauth]
client_id = "{cloud.client_id}"
token_url = "{cloud.token_url}"
refresh_token_file = "{token_file}"
[polling]
enable = false
[controls]
enable = true
climate = true
"""


@pytest.mark.services
async def test_the_daemon_without_polling_announces_controls_and_steers_the_car(
    mqtt_broker, tmp_path
):
    """``gridmate vehicles run`` as its own process with ``polling.enable = false``: the
    Fleet API client is still built for the car controls, so the car's discovery carries
    them and a charge limit set in Home Assistant reaches the awake car through the
    command proxy, without a wake."""
    prefix = mqtt_broker.topic_prefix()
    topics = Topics(f"{prefix}gm", f"{prefix}ha")
    car = plugged_car(display_name=NAME, sleep_after=None)
    seen_by_teslamate = TeslaMateCarModel(
        1, VIN, name=NAME, state="online", charging_state="Stopped", charge_limit_soc=80
    )
    log_path = tmp_path / "vehicles.log"
    async with (
        tesla_cloud_simulator(vehicles=[car]) as cloud,
        command_proxy_simulator(cloud) as proxy,
        simulated_teslamate(
            mqtt_broker.host, mqtt_broker.port, [seen_by_teslamate], namespace=prefix
        ) as teslamate,
    ):
        _access, refresh = cloud.issue_tokens()
        token_file = tmp_path / "tesla-refresh-token"
        token_file.write_text(refresh)
        config = tmp_path / "vehicles.toml"
        config.write_text(
            controls_daemon_config(tmp_path, mqtt_broker, prefix, cloud, proxy, token_file)
        )
        view = HomeAssistantView(
            mqtt_broker.host, mqtt_broker.port,
            discovery_prefix=topics.discovery_prefix, base=topics.base,
        )  # fmt: skip
        process = None
        try:
            async with view.running() as ha:
                with log_path.open("wb") as log:
                    process = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "gridmate", "vehicles", "run",
                        "--config", str(config), stdout=log, stderr=log,
                    )  # fmt: skip

                def teslamate_data_announced(entities: dict[Any, Any]) -> bool:
                    limit = entities.get((NAME, "Charge limit"))
                    return limit is not None and limit.state == 80.0

                try:
                    await ha.wait_for(teslamate_data_announced, 60)
                except TimeoutError:
                    pytest.fail(f"the car was not announced; log:\n{log_path.read_text()}")
                document = json.loads(view.retained[topics.discovery(VIN)])
                announced = sorted(c["cmd_t"] for c in control_entities(document).values())
                # No charging current control: TeslaMate does not report the maximum.
                assert announced == [
                    command_topic(topics.base, VIN, key)
                    for key in ("charge_limit", "charging", "climate")
                ], log_path.read_text()
                assert ha.value(NAME, "Charge limit control") == 80.0

                await ha.command(NAME, "Charge limit control", "90")
                async with asyncio.timeout(30):
                    while car.charge_limit_soc != 90:
                        await asyncio.sleep(0.05)
            process.terminate()
            assert await asyncio.wait_for(process.wait(), 30) == 0
        finally:
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
            retained = {t for t, _p, retain in teslamate.published if retain}
            await clear_retained(
                mqtt_broker.host, mqtt_broker.port, retained | set(view.retained) | {topics.status}
            )
    assert [(c[1], p) for c, p in zip(car.commands, car.command_parameters, strict=True)] == [
        ("set_charge_limit", {"percent": 90})
    ]
    assert car.signed_commands == 1  # signed by the proxy, not a bare REST command
    assert car.wakes == 0 and cloud.calls_to("wake_up") == []
    assert refresh not in log_path.read_text()
