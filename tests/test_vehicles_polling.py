"""Tesla API polling against the Tesla cloud simulator: sleeping cars are never woken or
read, the daily budget and 429s are respected, and data lands in the canonical state."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from gridmate.runtime.secrets import Secret
from gridmate.sim.tesla_cloud import SimulatedVehicle, tesla_cloud_simulator
from gridmate.tesla.fleet_api import BudgetUse, FleetApi
from gridmate.tesla.tokens import StaticTokenProvider
from gridmate.vehicles.arbitration import NO_SOURCE, TESLA_API, SourceBook
from gridmate.vehicles.catalogue import invalid_policies
from gridmate.vehicles.sources.manager import SourceManager
from gridmate.vehicles.sources.polling import PollingSource, map_vehicle_data
from gridmate.vehicles.state import StateStore

pytestmark = pytest.mark.services

VIN = "5YJ3E1EA7KF000001"


class StepClock:
    """Time that moves only when the test says so."""

    def __init__(self, start: datetime) -> None:
        self.moment = start

    def now(self) -> datetime:
        return self.moment

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


def test_vehicle_data_maps_to_the_catalogue():
    data = {
        "display_name": "Red",
        "charge_state": {
            "battery_level": 55,
            "charging_state": "Charging",
            "charger_power": 11,
            "fast_charger_present": False,
            "conn_charge_cable": "SAE",
            "battery_range": 170.5,
            "time_to_full_charge": 1.5,
            "timestamp": 1_800_000_000_000,
        },
        "drive_state": {"shift_state": None, "speed": None, "heading": 12},
        "location_data": {"latitude": 37.5, "longitude": -121.9},
        "vehicle_state": {"odometer": 12345.6, "locked": True, "car_version": "2026.20.3 abc"},
        "vehicle_config": {"car_type": "modely", "trim_badging": "74d"},
    }
    observed, fields = map_vehicle_data(data, received=1_800_000_010.0)
    values = dict(fields)
    assert observed == 1_800_000_000.0
    assert values["charge_state"] == "charging"
    assert values["ac_charging_power_kw"] == 11 and values["dc_charging_power_kw"] is None
    assert values["rated_range_mi"] == 170.5
    assert values["location"] == (37.5, -121.9)
    assert values["shift_state"] is None and values["speed_mph"] is None
    assert values["software_version"] == "2026.20.3"
    assert values["car_type"] == "Model Y"
    assert values["charging_cable_type"] == "SAE"


def test_vehicle_data_fills_what_teslamate_fills_from_the_same_answer():
    # TeslaMate reads these keys from vehicle_data; polling reads them the same way.
    data = {
        "charge_state": {
            "charge_energy_added": 12.34,
            "scheduled_charging_start_time": 1_800_003_600,
        },
        "climate_state": {"is_climate_on": True, "is_preconditioning": False},
        "drive_state": {
            "active_route_destination": "Work",
            "active_route_energy_at_arrival": 71,
            "active_route_miles_to_arrival": 6.485299,
            "active_route_minutes_to_arrival": 23.466667,
            "active_route_traffic_minutes_delay": 0.0,
            "active_route_latitude": 37.3861,
            "active_route_longitude": -122.0839,
        },
        "vehicle_state": {
            "fd_window": 0,
            "rd_window": 0,
            "fp_window": 1,
            "rp_window": 0,
            "is_user_present": True,
            "tpms_soft_warning_rl": True,
            "software_update": {
                "status": "downloading",
                "version": "2026.20.3 8f1c2d3e4a5b",
                "download_perc": 37,
                "install_perc": 1,
            },
        },
    }
    values = dict(map_vehicle_data(data, received=1_800_000_000.0)[1])
    assert values["charge_energy_added_kwh"] == 12.34
    assert values["scheduled_charging_start"] == "2027-01-15T09:00:00+00:00"
    assert values["climate_on"] is True and values["preconditioning"] is False
    assert values["destination_name"] == "Work"
    assert values["energy_at_arrival"] == 71
    assert values["minutes_to_arrival"] == 23.466667
    assert values["destination_location"] == (37.3861, -122.0839)
    assert values["window_passenger_front_open"] is True
    assert values["window_driver_front_open"] is False
    assert values["windows_open"] is True
    assert values["user_present"] is True
    assert values["tpms_soft_warning_rear_left"] is True
    assert "tpms_soft_warning_front_left" not in values  # not in the answer
    assert values["update_available"] is True
    assert values["update_version"] == "2026.20.3"
    assert values["update_download_percent"] == 37
    # No route, no update: the car leaves the route keys out and blanks the version.
    data["drive_state"] = {"heading": 12}
    data["vehicle_state"]["software_update"] = {"status": "", "version": " "}
    values = dict(map_vehicle_data(data, received=1_800_000_000.0)[1])
    assert values["destination_name"] is None and values["destination_location"] is None
    assert values["energy_at_arrival"] is None
    assert values["update_available"] is False and values["update_version"] is None


def test_vehicle_data_sunroof_only_for_cars_that_have_one():
    with_sunroof = {
        "vehicle_state": {"sun_roof_percent_open": 15, "sun_roof_state": "vent"},
        "vehicle_config": {"sun_roof_installed": 2},
    }
    values = dict(map_vehicle_data(with_sunroof, received=1_800_000_000.0)[1])
    assert values["sunroof_percent_open"] == 15
    assert values["sunroof_state"] == "vent"
    assert values["sunroof_installed"] is True
    without = {
        "vehicle_state": {"sun_roof_percent_open": None, "sun_roof_state": "unknown"},
        "vehicle_config": {"sun_roof_installed": 0},
    }
    values = dict(map_vehicle_data(without, received=1_800_000_000.0)[1])
    assert "sunroof_percent_open" not in values and "sunroof_state" not in values
    assert values["sunroof_installed"] is False


def test_the_bounds_car_controls_need_are_mapped_from_vehicle_data():
    data = {
        "charge_state": {
            "charge_limit_soc": 80,
            "charge_limit_soc_min": 50,
            "charge_limit_soc_max": 100,
            "charge_current_request": 16,
            "charge_current_request_max": 32,
        },
        "climate_state": {"is_climate_on": True, "inside_temp": 21.5, "outside_temp": 12.0},
    }
    _observed, fields = map_vehicle_data(data, received=1_800_000_010.0)
    values = dict(fields)
    assert values["charge_limit_soc_min"] == 50 and values["charge_limit_soc_max"] == 100
    assert values["charge_current_request_a"] == 16
    assert values["charge_current_request_max_a"] == 32
    assert values["climate_on"] is True


class Rig:
    def __init__(self, cloud, clock: StepClock, budget: int | None = 200) -> None:
        self.cloud = cloud
        self.clock = clock
        self.store = StateStore(invalid_policies())
        access, _refresh = cloud.issue_tokens()
        self.api = FleetApi(
            StaticTokenProvider(Secret(access)),
            base_url=cloud.base_url,
            clock=clock,
            daily_vehicle_budget=budget,
        )
        registry = CollectorRegistry()
        self.manager = SourceManager(
            self.store,
            book=SourceBook([TESLA_API], stale_after={}),
            names={},
            clock=clock,
            registry=registry,
            on_change=lambda applied: None,
        )
        self.polling = self.manager.polling = PollingSource(
            self.api,
            offer=self.manager.offer,
            facts=self.manager.facts(TESLA_API),
            wanted=self.manager.wants_polling,
            known_vins=self.manager.known_vins,
            clock=clock,
            registry=registry,
            active_interval=120,
            idle_interval=600,
            asleep_interval=900,
            start_delay=0,
            on_facts_changed=self.manager.facts_changed,
        )

    async def rounds(self, count: int, step: float) -> None:
        for _ in range(count):
            await self.polling.poll_once()
            self.clock.advance(step)


START = datetime(2026, 7, 1, 6, 0, tzinfo=UTC)


async def test_a_sleeping_car_is_never_read_or_woken():
    car = SimulatedVehicle(vin=VIN, state="asleep")
    clock = StepClock(START)
    async with tesla_cloud_simulator(vehicles=[car], clock=clock) as cloud:
        rig = Rig(cloud, clock)
        await rig.rounds(12, 300)  # an hour
        assert cloud.calls_to("vehicle_data") == []
        assert cloud.calls_to("wake_up") == []
        assert car.wakes == 0 and car.state == "asleep"
        # The free-of-wakes list was read, but not every round: every asleep_interval.
        assert 3 <= len(cloud.calls_to("vehicles")) <= 5
        assert rig.store.get(VIN).value("online") is False
        assert rig.manager.book.selected(VIN) == TESLA_API
        await rig.api.aclose()


async def test_an_online_car_is_read_and_a_charging_one_more_often():
    car = SimulatedVehicle(vin=VIN, state="online", charging_state="Charging", battery_level=40)
    clock = StepClock(START)
    async with tesla_cloud_simulator(vehicles=[car], clock=clock) as cloud:
        rig = Rig(cloud, clock, budget=None)
        await rig.rounds(1, 60)
        state = rig.store.get(VIN)
        assert state.value("battery_level") == 40
        assert state.value("charge_state") == "charging"
        assert state.value("ac_charging_power_kw") == car.charger_power_kw
        assert state.values()["location"] == (car.latitude, car.longitude)
        car.battery_level = 41
        await rig.rounds(10, 60)  # ten minutes while charging: every 2 minutes
        assert len(cloud.calls_to("vehicle_data")) == 1 + 5
        assert rig.store.get(VIN).value("battery_level") == 41
        car.charging_state = "Complete"
        calls = len(cloud.calls_to("vehicle_data"))
        await rig.rounds(20, 60)  # parked and awake: every 10 minutes
        assert len(cloud.calls_to("vehicle_data")) - calls == 2
        # It fell asleep: the list says so, nothing is read, nothing wakes it.
        car.state = "asleep"
        calls = len(cloud.calls_to("vehicle_data"))
        await rig.rounds(30, 60)
        assert len(cloud.calls_to("vehicle_data")) == calls
        assert cloud.calls_to("wake_up") == []
        assert rig.store.get(VIN).value("online") is False
        await rig.api.aclose()


async def test_a_rebuilt_state_gets_the_last_poll_back_without_asking_tesla():
    car = SimulatedVehicle(vin=VIN, state="online", battery_level=47, sleep_after=None)
    clock = StepClock(START)
    async with tesla_cloud_simulator(vehicles=[car], clock=clock) as cloud:
        rig = Rig(cloud, clock, budget=None)
        await rig.rounds(1, 60)
        reads = len(cloud.calls_to("vehicle_data"))
        # The hub restores its state from the broker (which may predate the poll).
        rig.store.clear()
        rig.manager.restored()
        assert rig.store.get(VIN).value("battery_level") == 47
        assert len(cloud.calls_to("vehicle_data")) == reads
        await rig.api.aclose()


async def test_the_daily_budget_is_spread_and_never_exceeded():
    car = SimulatedVehicle(vin=VIN, state="online", charging_state="Charging")
    clock = StepClock(START.replace(hour=22))
    async with tesla_cloud_simulator(vehicles=[car], clock=clock) as cloud:
        rig = Rig(cloud, clock, budget=4)
        # Another gridmate component (or a restart) used two of today's four already.
        rig.api.restore_budget_use(BudgetUse("vehicle_daily", VIN, 2, 4, clock.now().date()))
        await rig.rounds(120, 60)  # 22:00 to midnight
        # Two left for two hours: one now, one an hour later, none more.
        assert [c.t.hour for c in cloud.calls_to("vehicle_data")] == [22, 23]
        await rig.rounds(5, 60)  # a new day, a new budget
        assert len(cloud.calls_to("vehicle_data")) == 3
        await rig.api.aclose()


async def test_a_used_up_budget_pauses_polling_and_says_why():
    car = SimulatedVehicle(vin=VIN, state="online")
    clock = StepClock(START)
    async with tesla_cloud_simulator(vehicles=[car], clock=clock) as cloud:
        rig = Rig(cloud, clock, budget=5)
        rig.api.restore_budget_use(BudgetUse("vehicle_daily", VIN, 5, 5, clock.now().date()))
        await rig.rounds(10, 60)
        assert cloud.calls_to("vehicle_data") == []
        verdict = rig.manager.book.verdict(VIN, TESLA_API)
        assert verdict is not None and "budget" in verdict.reason
        assert rig.manager.book.selected(VIN) == NO_SOURCE
        await rig.api.aclose()


async def test_a_429_blocks_the_car_and_hands_it_to_no_source():
    car = SimulatedVehicle(vin=VIN, state="online", charging_state="Charging")
    clock = StepClock(START)
    async with tesla_cloud_simulator(vehicles=[car], clock=clock) as cloud:
        cloud.add_rate_limit(1, 3600, endpoint="vehicle_data", retry_after=1800)
        rig = Rig(cloud, clock, budget=None)
        await rig.rounds(1, 130)
        await rig.rounds(1, 10)
        limited = [c for c in cloud.calls_to("vehicle_data") if c.status == 429]
        assert len(limited) == 1
        verdict = rig.manager.book.verdict(VIN, TESLA_API)
        assert verdict is not None and "rate limit" in verdict.reason
        assert rig.manager.book.selected(VIN) == NO_SOURCE
        await rig.rounds(20, 60)  # the client obeys Retry-After: nothing more is sent
        assert len(cloud.calls_to("vehicle_data")) == 2
        await rig.api.aclose()


async def test_data_source_names_polling_only_once_a_poll_delivered_and_none_after_it_fails():
    car = SimulatedVehicle(vin=VIN, state="online")
    clock = StepClock(START)
    async with tesla_cloud_simulator(vehicles=[car], clock=clock) as cloud:
        cloud.inject_failures(1, status=503, endpoint="vehicle_data")
        rig = Rig(cloud, clock, budget=None)
        await rig.rounds(1, 130)  # selected for polling, but the first poll failed
        assert rig.manager.book.selected(VIN) == TESLA_API
        state = rig.store.get(VIN)
        assert state is None or state.value("data_source") in (None, NO_SOURCE)
        await rig.rounds(1, 130)
        assert rig.store.get(VIN).value("data_source") == TESLA_API
        delivered_at = rig.store.get(VIN).last_update
        cloud.inject_failures(5, status=503, endpoint="vehicle_data")
        await rig.rounds(6, 130)  # the next poll is due within idle_interval
        state = rig.store.get(VIN)
        assert state.value("data_source") == NO_SOURCE  # the poll failed: no source delivers
        # "Last update" is when the car's data was observed, not when the source changed.
        assert state.last_update == delivered_at
        await rig.api.aclose()
