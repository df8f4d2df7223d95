"""TeslaMate as a source: topics, payloads and units (pure), its database (real
PostgreSQL with TeslaMate's tables) and its MQTT output (real Mosquitto)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from gridmate.runtime.clock import SystemClock
from gridmate.sim.teslamate import (
    TeslaMateCarModel,
    create_teslamate_schema,
    encode_value,
    simulated_teslamate,
)
from gridmate.vehicles.arbitration import Activity, SourceFacts
from gridmate.vehicles.catalogue import DERIVED
from gridmate.vehicles.sources.settings import TeslaMateSourceSettings
from gridmate.vehicles.sources.teslamate import (
    BadPayload,
    TeslaMateCarView,
    TeslaMateSource,
    TopicInfo,
    database_lag_problem,
    interpret,
    parse_topic,
    subscription,
)
from gridmate.vehicles.sources.teslamate_cars import TeslaMateCar, TeslaMateDatabase, build_car_map
from gridmate.vehicles.state import FieldValue, VehicleState
from gridmate.vehicles.units import km_from_miles, kmh_from_mph, miles_from_km, mph_from_kmh

VIN1 = "5YJ3E1EA7KF000001"
VIN2 = "7SAYGDEE9PA000002"


# ---------------------------------------------------------------- topics


def test_topics_are_parsed_from_the_right_with_and_without_namespace():
    assert parse_topic("teslamate/cars/1/battery_level") == TopicInfo(None, 1, "battery_level")
    assert parse_topic("teslamate/account_0/cars/12/state") == TopicInfo("account_0", 12, "state")
    # A namespace called "cars" is allowed by TeslaMate and still parses.
    assert parse_topic("teslamate/cars/cars/3/speed") == TopicInfo("cars", 3, "speed")
    for other in (
        "teslamate/cars/x/state",
        "teslamate/cars/1",
        "tesla/cars/1/state",
        "teslamate/a/b/cars/1/state",
        "teslamate//cars/1/state",
        "homeassistant/device/teslamate_1/config",
        # Digits of other scripts are not car ids (int() would accept some, not all).
        "teslamate/cars/\u00b2/state",
        "teslamate/cars/\u0661/state",
        "teslamate/cars/\uff11/state",
        "teslamate/cars/1\u00b2/state",
    ):
        assert parse_topic(other) is None, other
    assert subscription(None) == "teslamate/cars/+/+"
    assert subscription("account_0") == "teslamate/account_0/cars/+/+"


# ---------------------------------------------------------------- payloads and units


def updates(key: str, payload: str, view: TeslaMateCarView | None = None) -> dict[str, Any]:
    return dict(interpret(view or TeslaMateCarView(1), key, payload))


def test_units_are_converted_to_the_catalogues():
    # Not rounded: Home Assistant converts back for metric users and must get
    # TeslaMate's number again (see gridmate.vehicles.units).
    odometer = updates("odometer", "19312.13")["odometer_mi"]
    assert odometer == pytest.approx(12000.0, abs=0.01) and km_from_miles(odometer) == 19312.13
    rated = updates("rated_battery_range_km", "300.0")["rated_range_mi"]
    assert rated == pytest.approx(186.41, abs=0.01) and km_from_miles(rated) == 300.0
    view = TeslaMateCarView(1, state="driving")
    speed = updates("speed", "88", view)["speed_mph"]
    assert speed == pytest.approx(54.68, abs=0.01) and kmh_from_mph(speed) == 88
    assert km_from_miles(updates("odometer", "20117.04")["odometer_mi"]) == 20117.04
    assert updates("charger_power", "11") == {"ac_charging_power_kw": 11}
    assert updates("charger_actual_current", "2.05") == {"charger_current_a": 2.05}
    assert updates("time_to_full_charge", "1.25") == {"time_to_full_charge_h": 1.25}
    assert updates("tpms_pressure_fl", "2.9") == {"tpms_front_left_bar": 2.9}
    assert updates("inside_temp", "21.5") == {"inside_temp_c": 21.5}
    assert updates("charging_state", "NoPower") == {"charge_state": "no_power"}
    assert updates("shift_state", "D") == {"shift_state": "d"}
    assert updates("model", "3") == {"car_type": "Model 3"}
    assert updates("sentry_mode", "true") == {"sentry_mode": "armed"}
    assert updates("locked", "false") == {"locked": False}


def test_an_empty_payload_is_null():
    for key, field in (
        ("charger_power", "ac_charging_power_kw"),
        ("charger_actual_current", "charger_current_a"),
        ("charger_voltage", "charger_voltage_v"),
        ("charger_phases", "charger_phases"),
        ("time_to_full_charge", "time_to_full_charge_h"),
        ("trim_badging", "trim"),
    ):
        assert updates(key, "") == {field: None}
    # Parking: shift state null, and the retained driving speed is no longer believed.
    assert updates("shift_state", "") == {"shift_state": None, "speed_mph": None}
    view = TeslaMateCarView(1)
    interpret(view, "healthy", "")
    assert view.healthy is None


def test_speed_is_only_believed_while_driving():
    view = TeslaMateCarView(1)
    assert updates("state", "driving", view) == {"online": True}
    assert updates("speed", "50", view) == {"speed_mph": mph_from_kmh(50)}
    assert updates("state", "online", view) == {"online": True, "speed_mph": None}
    assert updates("speed", "50", view) == {"speed_mph": None}
    assert updates("state", "asleep", view)["online"] is False
    assert view.activity is Activity.SLEEPING


def test_location_document_is_preferred_over_the_deprecated_pair():
    view = TeslaMateCarView(1)
    assert updates("latitude", "37.5", view) == {}
    assert updates("longitude", "-121.9", view) == {"location": (37.5, -121.9)}
    assert updates("location", '{"latitude":37.6,"longitude":-122.0}', view) == {
        "location": (37.6, -122.0)
    }
    assert updates("latitude", "1.0", view) == {}


def test_doors_and_routes_become_one_field_each():
    view = TeslaMateCarView(1)
    interpret(view, "driver_front_door_open", "true")
    assert updates("frunk_open", "false", view) == {
        "doors": {"driver_front": True, "trunk_front": False}
    }
    # TeslaMate's own example, in its units (miles, minutes, percent).
    route = (
        '{"destination":"Home","energy_at_arrival":73,"miles_to_arrival":6.485299,'
        '"minutes_to_arrival":23.466667,"traffic_minutes_delay":0.0,'
        '"location":{"latitude":35.278131,"longitude":29.744801},"error":null}'
    )
    assert updates("active_route", route) == {
        "destination_name": "Home",
        "minutes_to_arrival": 23.466667,
        "miles_to_arrival": 6.485299,
        "energy_at_arrival": 73,
        "traffic_delay_minutes": 0.0,
        "destination_location": (35.278131, 29.744801),
    }
    no_route = dict.fromkeys(
        (
            "destination_name",
            "minutes_to_arrival",
            "miles_to_arrival",
            "energy_at_arrival",
            "traffic_delay_minutes",
            "destination_location",
        )
    )
    assert updates("active_route", '{"error":"No active route available"}') == no_route


def test_the_one_value_route_topics_count_until_the_route_document_arrives():
    view = TeslaMateCarView(1)
    assert updates("active_route_destination", "Work", view) == {"destination_name": "Work"}
    assert updates("active_route_latitude", "35.278131", view) == {"destination_location": None}
    assert updates("active_route_longitude", "29.744801", view) == {
        "destination_location": (35.278131, 29.744801)
    }
    # No route: TeslaMate writes the literal "nil".
    assert updates("active_route_destination", "nil", view) == {"destination_name": None}
    assert updates("active_route_latitude", "nil", view) == {"destination_location": None}
    with pytest.raises(BadPayload):
        updates("active_route_longitude", "200.0", view)
    # Once the route document has arrived it says everything; these are repeats.
    interpret(view, "active_route", '{"error":"No active route available"}')
    assert updates("active_route_destination", "Work", view) == {}


def test_values_are_encoded_as_teslamate_encodes_them():
    assert encode_value(None) == b""
    assert encode_value(True) == b"true"
    assert encode_value(48.9) == b"48.9"
    assert encode_value(datetime(2021, 4, 19, 16, 17, 22, 740000, tzinfo=UTC)) == (
        b"2021-04-19T16:17:22.740000Z"
    )


class Collector:
    """What a source offered, and its facts, as the arbitration would keep them."""

    def __init__(self) -> None:
        self.offers: list[tuple[str, str, list[tuple[str, Any, float]]]] = []
        self.facts: dict[str, SourceFacts] = {}
        self.changed: list[str] = []

    def offer(self, source: str, vin: str, values: list[tuple[str, Any, float]]) -> None:
        self.offers.append((source, vin, values))

    def fact(self, vin: str) -> SourceFacts:
        return self.facts.setdefault(vin, SourceFacts())

    def values(self, vin: str) -> dict[str, Any]:
        return {k: v for _s, v_vin, vs in self.offers if v_vin == vin for k, v, _t in vs}


def source(collector: Collector, **settings: Any) -> TeslaMateSource:
    return TeslaMateSource(
        TeslaMateSourceSettings(enable=True, use_database=False, **settings),
        offer=collector.offer,
        facts=collector.fact,
        clock=SystemClock(),
        registry=CollectorRegistry(),
        on_facts_changed=collector.changed.extend,
    )


def test_bad_payloads_are_skipped_and_never_fatal():
    collector = Collector()
    tm = source(collector, cars={1: VIN1})
    for key, payload in (
        ("battery_level", b"fifty"),
        ("charger_actual_current", b"nan"),
        ("location", b"{not json"),
        ("latitude", b"123.0"),
        ("charging_state", b"Exploding"),
        ("healthy", b"maybe"),
        ("state", b"\xff\xfe"),
    ):
        tm.handle(f"teslamate/cars/1/{key}", payload)
    assert collector.offers == []
    tm.handle("teslamate/cars/1/battery_level", b"55")
    assert collector.values(VIN1) == {"battery_level": 55}
    assert tm.metrics.messages.labels("bad_payload")._value.get() == 7


def test_other_namespaces_and_unknown_keys_are_ignored():
    collector = Collector()
    tm = source(collector, cars={1: VIN1}, namespace="home")
    tm.handle("teslamate/cars/1/battery_level", b"50")
    tm.handle("teslamate/other/cars/1/battery_level", b"51")
    tm.handle("teslamate/home/cars/1/center_display_state", b"2")  # not mapped
    assert collector.offers == []
    tm.handle("teslamate/home/cars/1/battery_level", b"52")
    assert collector.values(VIN1) == {"battery_level": 52}


def test_healthy_and_state_feed_the_facts():
    collector = Collector()
    tm = source(collector, cars={1: VIN1})
    tm.handle("teslamate/cars/1/state", b"charging")
    tm.handle("teslamate/cars/1/healthy", b"false")
    facts = collector.facts[VIN1]
    assert facts.activity is Activity.ACTIVE and facts.healthy is False
    assert VIN1 in collector.changed
    tm.handle("teslamate/cars/1/healthy", b"")
    assert facts.healthy is None


def test_messages_of_an_unmapped_car_wait_for_its_vin():
    collector = Collector()
    tm = source(collector)
    tm.handle("teslamate/cars/2/battery_level", b"70", retained=True)
    tm.handle("teslamate/cars/2/state", b"online", retained=True)
    assert collector.offers == []
    tm.use_car_map(build_car_map({}, [TeslaMateCar(2, VIN2, "Blue")]))
    # The state is applied first, so the speed is known to be null (not driving).
    assert collector.values(VIN2) == {"battery_level": 70, "online": True, "speed_mph": None}


def test_car_map_prefers_the_configuration_and_reports_legacy_null_vins():
    cars = [
        TeslaMateCar(1, VIN1, "Red"),
        TeslaMateCar(2, None, "Old"),
        TeslaMateCar(3, None, "Older"),
    ]
    mapped = build_car_map({3: VIN2}, cars)
    assert mapped.vins == {1: VIN1, 3: VIN2}
    assert mapped.unmapped == (2,)
    assert mapped.names[2] == "Old"


def test_database_lag_convicts_mqtt_only_beyond_the_tolerance():
    assert database_lag_problem(None, last_live=None, session_started=0, tolerance=120) is None
    assert database_lag_problem(1000, last_live=900, session_started=0, tolerance=120) is None
    problem = database_lag_problem(1200, last_live=900, session_started=0, tolerance=120)
    assert problem and "never arrived over MQTT" in problem
    # Rows older than our subscription are covered by the retained snapshot.
    assert database_lag_problem(1200, last_live=None, session_started=1150, tolerance=120) is None


# ---------------------------------------------------------------- real PostgreSQL


@pytest.mark.services
async def test_cars_and_activity_from_teslamates_database(postgres_dsn):
    await create_teslamate_schema(postgres_dsn)
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(
            "INSERT INTO cars (id, eid, vid, vin, name) VALUES "
            f"(1, 11, 21, '{VIN1}', 'Red'), (2, 12, 22, NULL, 'Old'), "
            "(3, 13, 23, '__legacy_null_vin__:3', 'Older')"
        )
        stamp = datetime(2026, 7, 1, 12, 0)
        await conn.execute(
            "INSERT INTO positions (date, latitude, longitude, car_id) "
            "VALUES ($1, 37.5, -121.9, 1)",
            stamp,
        )
        await conn.execute(
            "INSERT INTO states (state, start_date, car_id) VALUES ('online', $1, 1)",
            stamp + timedelta(minutes=5),
        )
        process = await conn.fetchval(
            "INSERT INTO charging_processes (start_date, car_id) VALUES ($1, 1) RETURNING id",
            stamp,
        )
        await conn.execute(
            "INSERT INTO charges (date, charger_power, charge_energy_added, charging_process_id) "
            "VALUES ($1, 11, 1.5, $2)",
            stamp + timedelta(minutes=9),
            process,
        )
    finally:
        await conn.close()
    database = TeslaMateDatabase(postgres_dsn)
    try:
        cars = await database.cars()
        assert cars == [
            TeslaMateCar(1, VIN1, "Red"),
            TeslaMateCar(2, None, "Old"),
            TeslaMateCar(3, None, "Older"),
        ]
        activity = await database.latest_activity()
        expected = (stamp + timedelta(minutes=9)).replace(tzinfo=UTC).timestamp()
        assert activity[1].newest == expected
        assert activity[1].position_at == stamp.replace(tzinfo=UTC).timestamp()
        assert activity[2].newest is None
    finally:
        await database.close()


@pytest.mark.services
async def test_an_unreachable_database_is_a_clear_error():
    from gridmate.tesla.teslamate_db import TeslaMateDatabaseError

    database = TeslaMateDatabase("postgresql://teslamate@127.0.0.1:1/teslamate", connect_timeout=2)
    with pytest.raises(TeslaMateDatabaseError, match="cannot reach TeslaMate's database"):
        await database.cars()


# ---------------------------------------------------------------- real Mosquitto


async def until(condition, within: float = 10.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), within)


@pytest.mark.services
@pytest.mark.parametrize("with_namespace", [False, True])
async def test_teslamate_over_a_real_broker(mqtt_broker, with_namespace):
    # Each run gets a namespace of its own on the shared broker; without one, the car
    # id is unique instead (retained topics of other runs may share the root).
    namespace = mqtt_broker.topic_prefix() if with_namespace else None
    car_id = 1 if with_namespace else 30_000 + int(mqtt_broker.topic_prefix()[1:6], 16) % 30_000
    collector = Collector()
    settings = {"mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port}}
    car = TeslaMateCarModel(
        car_id,
        VIN1,
        name="Red",
        state="charging",
        charging_state="Charging",
        charger_power=11.0,
        charger_voltage=240,
        charger_actual_current=16.0,
    )
    async with simulated_teslamate(
        mqtt_broker.host, mqtt_broker.port, [car], namespace=namespace
    ) as teslamate:
        tm = source(collector, cars={car_id: VIN1}, namespace=namespace, **settings)
        stop = asyncio.Event()
        task = asyncio.create_task(tm.run(stop))
        try:
            # The retained snapshot arrives at subscription, one topic at a time.
            checked = {"ac_charging_power_kw", "charge_state", "location", "odometer_mi"}
            await until(lambda: checked <= collector.values(VIN1).keys())
            values = collector.values(VIN1)
            assert values["ac_charging_power_kw"] == 11.0
            assert values["charge_state"] == "charging"
            assert values["location"] == (37.4925, -121.9447)
            assert values["odometer_mi"] == pytest.approx(12000.0, abs=0.01)
            # healthy is not retained: only live summaries carry it.
            assert collector.facts[VIN1].healthy is None
            await teslamate.set_state(
                car_id,
                "online",
                charging_state="Complete",
                charger_power=None,
                charger_actual_current=None,
            )
            await until(lambda: collector.values(VIN1).get("ac_charging_power_kw", 0) is None)
            assert collector.values(VIN1)["charger_current_a"] is None
            assert collector.values(VIN1)["charge_state"] == "complete"
            assert collector.facts[VIN1].healthy is True
            assert collector.facts[VIN1].activity is Activity.IDLE
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        # Leave nothing retained for other runs.
        teslamate.cars[car_id].healthy = True
    from gridmate.sim.teslamate import clear_retained

    await clear_retained(
        mqtt_broker.host, mqtt_broker.port, {t for t, _p, retain in teslamate.published if retain}
    )


def test_geofence_and_plugged_in_are_mapped_and_plugged_in_decides_the_charge_cable():
    assert updates("geofence", "Home") == {"geofence": "Home"}
    assert updates("geofence", "") == {"geofence": None}
    assert updates("plugged_in", "true") == {"cable_plugged_in": True}
    state = VehicleState("V")
    state.fields["charge_state"] = FieldValue("disconnected", 1.0, "teslamate")
    state.fields["cable_plugged_in"] = FieldValue(True, 2.0, "teslamate")
    plugged = next(e for e in DERIVED if e.key == "plugged_in")
    assert plugged.derive is not None and plugged.derive(state) is True
    alerts = next(e for e in DERIVED if e.key == "active_alert_count")
    assert alerts.derive is not None and alerts.derive(VehicleState("V")) == 0


def test_teslamate_topics_that_were_ignored_are_mapped():
    assert updates("elevation", "331") == {"elevation_m": 331}
    assert updates("charge_energy_added", "12.5") == {"charge_energy_added_kwh": 12.5}
    assert updates("charge_energy_added", "") == {"charge_energy_added_kwh": None}
    assert updates("scheduled_charging_start_time", "2026-07-01T06:00:00Z") == {
        "scheduled_charging_start": "2026-07-01T06:00:00+00:00"
    }
    with pytest.raises(BadPayload, match="time zone"):
        updates("scheduled_charging_start_time", "2026-07-01T06:00:00")
    for key, field in (
        ("is_climate_on", "climate_on"),
        ("is_preconditioning", "preconditioning"),
        ("is_user_present", "user_present"),
        ("update_available", "update_available"),
        ("windows_open", "windows_open"),
        ("passenger_rear_window_open", "window_passenger_rear_open"),
        ("tpms_soft_warning_fl", "tpms_soft_warning_front_left"),
    ):
        assert updates(key, "true") == {field: True}
    assert updates("update_version", "2026.20.1") == {"update_version": "2026.20.1"}
    assert updates("download_perc", "100") == {"update_download_percent": 100}
    assert updates("install_perc", "42") == {"update_install_percent": 42}
    assert updates("charge_current_request_max", "32") == {"charge_current_request_max_a": 32}


def test_sunroof_topics_are_mapped_and_an_unknown_state_shows_nothing():
    assert updates("sun_roof_installed", "true") == {"sunroof_installed": True}
    assert updates("sun_roof_percent_open", "80") == {"sunroof_percent_open": 80}
    assert updates("sun_roof_state", "vent") == {"sunroof_state": "vent"}
    # Tesla's word for a car without a sunroof: no entity for it.
    assert updates("sun_roof_state", "unknown") == {}


def test_metric_values_survive_home_assistants_conversion_back():
    # Every TeslaMate distance and speed with the precision TeslaMate publishes comes
    # back from Home Assistant's conversion as the number TeslaMate sent, or one unit
    # in the last place of a double off where no double maps onto it.
    exact = total = 0
    for tenths in range(0, 3_000_000, 997):
        km = tenths / 100
        back = km_from_miles(miles_from_km(km))
        total += 1
        exact += back == km
        assert back == pytest.approx(km, rel=3e-16, abs=1e-12)
    for kmh in range(0, 260):
        assert kmh_from_mph(mph_from_kmh(kmh)) == pytest.approx(kmh, rel=3e-16)
    assert exact / total > 0.8


def test_the_cars_table_names_the_model_until_the_car_does():
    from gridmate.vehicles.homeassistant.discovery import Topics, discovery_document

    tm = source(Collector(), cars={})
    tm.use_car_map(build_car_map({}, [TeslaMateCar(1, VIN1, "Red", "3", "P74D")]))
    assert tm.model_of(VIN1) == "Model 3 P74D"
    state = VehicleState(VIN1)
    document = discovery_document(VIN1, state, Topics(), {}, model=tm.model_of(VIN1))
    assert document["dev"]["mdl"] == "Model 3 P74D"
    state.fields["car_type"] = FieldValue("Model Y", 1.0, "fleet_telemetry")
    document = discovery_document(VIN1, state, Topics(), {}, model=tm.model_of(VIN1))
    assert document["dev"]["mdl"] == "Model Y"  # the car's own data wins
