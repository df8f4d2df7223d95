"""The vehicle state, the Fleet Telemetry mapping and the publisher, without I/O.

Records are real decoder output: built from the upstream schema by the simulator and
decoded by ``decode_record``, as the hub does.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from gridmate.sim.fleet_telemetry import (
    INVALID_DATUM,
    SimulatedCar,
    alerts_record,
    connectivity_record,
    sample_vin,
    telemetry_record,
)
from gridmate.vehicles.catalogue import ENTITIES, FIELDS, TYRES, invalid_policies
from gridmate.vehicles.homeassistant.discovery import (
    Topics,
    discovery_document,
    restore_fields,
    state_document,
)
from gridmate.vehicles.homeassistant.publisher import Publisher
from gridmate.vehicles.state import INVALID, InvalidPolicy, Outcome, StateStore
from gridmate.vehicles.telemetry.decode import decode_record
from gridmate.vehicles.telemetry.source import FleetTelemetrySource

NS = "tesla"
VIN = sample_vin(7)
T0 = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)


def decoded(kafka_record):
    return decode_record(kafka_record.topic, kafka_record.headers, kafka_record.value, NS)


def v(signals, at, **options):
    return decoded(telemetry_record(NS, VIN, at, signals, **options))


@pytest.fixture
def store():
    return StateStore(invalid_policies())


@pytest.fixture
def source(store):
    return FleetTelemetrySource(store, online_timeout=600, stale_connection_after=3600)


def test_newer_observation_wins_and_older_is_ignored(store):
    assert store.update(VIN, "battery_level", 50, 100.0, "x") is Outcome.CHANGED
    assert store.update(VIN, "battery_level", 40, 90.0, "x") is Outcome.IGNORED
    assert store.update(VIN, "battery_level", 50, 110.0, "x") is Outcome.TOUCHED
    assert store.update(VIN, "battery_level", 55, 110.0, "x") is Outcome.CHANGED
    # A resend as old as what is known does not overwrite it.
    assert store.update(VIN, "battery_level", 54, 110.0, "x", resend=True) is Outcome.IGNORED
    assert store.get(VIN).value("battery_level") == 55


def test_invalid_keeps_or_clears_per_policy(store):
    store.update(VIN, "shift_state", "d", 1.0, "x")
    store.update(VIN, "time_to_full_charge_h", 1.5, 1.0, "x")
    assert store.update(VIN, "shift_state", INVALID, 2.0, "x") is Outcome.IGNORED
    assert store.update(VIN, "time_to_full_charge_h", INVALID, 2.0, "x") is Outcome.CHANGED
    state = store.get(VIN)
    assert state.value("shift_state") == "d"
    assert state.value("time_to_full_charge_h") is None
    custom = StateStore(invalid_policies({"shift_state": InvalidPolicy.CLEAR}))
    custom.update(VIN, "shift_state", "d", 1.0, "x")
    custom.update(VIN, "shift_state", INVALID, 2.0, "x")
    assert custom.get(VIN).value("shift_state") is None


@pytest.mark.parametrize("typed", [True, False], ids=["prefer_typed", "strings"])
@pytest.mark.parametrize("as_json", [False, True], ids=["protobuf", "json"])
def test_records_map_to_fields_in_the_cars_units(source, store, typed, as_json):
    car = SimulatedCar(VIN, name="Blue")
    car.drive(60, 30.0)
    car.plug_in(7.7, 240)
    signals = car.signals(everything=True) | {"DoorState": {"TrunkRear": True}}
    applied = source.apply(v(signals, T0, typed=typed, as_json=as_json))
    state = store.get(VIN)
    assert "battery_level" in applied.changed
    assert state.value("vehicle_name") == "Blue"
    assert state.value("car_type") == "Model 3"
    assert state.value("software_version") == "2025.44.25.5"
    assert state.value("shift_state") == "d"
    assert state.value("charge_state") == "charging"
    assert state.value("speed_mph") == pytest.approx(30.0)
    assert state.value("odometer_mi") == pytest.approx(car.odometer_mi)
    assert state.value("charger_voltage_v") == pytest.approx(240)
    assert state.value("tpms_front_left_bar") == pytest.approx(2.9)
    assert state.value("locked") is True
    assert state.value("location") == pytest.approx((car.latitude, car.longitude))
    assert state.value("doors")["trunk_rear"] is True
    assert state.value("online") is True


@pytest.mark.parametrize("typed", [True, False], ids=["prefer_typed", "strings"])
@pytest.mark.parametrize("as_json", [False, True], ids=["protobuf", "json"])
def test_fleet_telemetry_feeds_the_same_fields_as_teslamate(source, store, typed, as_json):
    # Windows, tyre warnings, climate, preconditioning and the software update: the
    # fields TeslaMate fills from its own topics.
    signals = {
        "FdWindow": "Closed",
        "RdWindow": "Closed",
        "FpWindow": "PartiallyOpen",
        "RpWindow": "Closed",
        "TpmsSoftWarnings": {"rear_left": True},
        "HvacPower": "Precondition",
        "SoftwareUpdateVersion": "2026.20.3 8f1c2d3e4a5b",
        "SoftwareUpdateDownloadPercentComplete": 100,
        "SoftwareUpdateInstallationPercentComplete": 42,
    }
    applied = source.apply(v(signals, T0, typed=typed, as_json=as_json))
    state = store.get(VIN)
    assert state.value("window_driver_front_open") is False
    assert state.value("window_passenger_front_open") is True  # partly open is open
    assert state.value("windows_open") is True
    assert [state.value(f"tpms_soft_warning_{tyre}") for tyre in TYRES] == [
        False, False, True, False
    ]  # fmt: skip
    assert state.value("climate_on") is True and state.value("preconditioning") is True
    assert state.value("update_available") is True
    assert state.value("update_version") == "2026.20.3"
    assert state.value("update_download_percent") == 100
    assert state.value("update_install_percent") == 42
    assert not any(key.startswith("ft_") for key in applied.changed)
    # Every window closed, climate on for the driver, no update any more.
    later = T0 + timedelta(minutes=1)
    signals = {
        "FpWindow": "Closed",
        "HvacPower": "On",
        "SoftwareUpdateVersion": " ",
        "TpmsSoftWarnings": {},
    }
    source.apply(v(signals, later, typed=typed, as_json=as_json))
    state = store.get(VIN)
    assert state.value("windows_open") is False
    assert state.value("climate_on") is True and state.value("preconditioning") is False
    assert state.value("update_available") is False and state.value("update_version") is None
    assert state.value("tpms_soft_warning_rear_left") is False
    # Cabin overheat protection runs the fans, but is not "climate on".
    source.apply(v({"HvacPower": "OverheatProtect"}, later + timedelta(1), typed=typed))
    assert store.get(VIN).value("climate_on") is False


@pytest.mark.parametrize("typed", [True, False], ids=["prefer_typed", "strings"])
@pytest.mark.parametrize("as_json", [False, True], ids=["protobuf", "json"])
def test_fleet_telemetry_route_fields(source, store, typed, as_json):
    signals = {
        "DestinationName": "Home",
        "DestinationLocation": (35.278131, -29.744801),
        "MilesToArrival": 6.5,
        "MinutesToArrival": 23.5,
        "ExpectedEnergyPercentAtTripArrival": 73,
        "RouteTrafficMinutesDelay": 2.5,
    }
    source.apply(v(signals, T0, typed=typed, as_json=as_json))
    state = store.get(VIN)
    assert state.value("destination_location") == pytest.approx((35.278131, -29.744801))
    assert state.value("energy_at_arrival") == 73
    assert state.value("traffic_delay_minutes") == pytest.approx(2.5)
    # The route ends: the car invalidates its signals and the fields clear.
    source.apply(v(dict.fromkeys(signals, INVALID_DATUM), T0 + timedelta(0, 1), typed=typed))
    state = store.get(VIN)
    for key in ("destination_name", "destination_location", "energy_at_arrival"):
        assert state.value(key) is None, key


def test_the_destination_is_the_destination_entitys_attributes(source, store):
    topics = Topics()
    publisher = Publisher(store, topics, {}, now=lambda: 0.0)
    publisher.mark(source.apply(v({"VehicleSpeed": 10.0}, T0)))
    batch = publisher.take()
    assert topics.destination(VIN) not in [m.topic for m in batch.messages]  # never routed
    route = {"DestinationName": "Home", "DestinationLocation": (35.3, 29.7)}
    publisher.mark(source.apply(v(route, T0 + timedelta(0, 1))))
    batch = publisher.take()
    sent = {m.topic: json.loads(m.payload) for m in batch.messages}
    assert sent[topics.destination(VIN)] == {"latitude": 35.3, "longitude": 29.7}
    config = sent[topics.discovery(VIN)]["cmps"][f"{VIN}_destination_name"]
    assert config["json_attr_t"] == topics.destination(VIN)
    invalid = dict.fromkeys(route, INVALID_DATUM)
    publisher.mark(source.apply(v(invalid, T0 + timedelta(0, 2))))
    sent = {m.topic: json.loads(m.payload) for m in publisher.take().messages}
    assert sent[topics.destination(VIN)] == {}


@pytest.mark.parametrize("typed", [True, False], ids=["prefer_typed", "strings"])
def test_sunroof_installed_from_fleet_telemetry(source, store, typed):
    source.apply(v({"SunroofInstalled": "Gen2Installed"}, T0, typed=typed))
    assert store.get(VIN).value("sunroof_installed") is True
    source.apply(v({"SunroofInstalled": "NotInstalled"}, T0 + timedelta(0, 1), typed=typed))
    assert store.get(VIN).value("sunroof_installed") is False


def test_one_window_unknown_leaves_any_window_open_unknown_until_one_is_open(source, store):
    source.apply(v({"FdWindow": "Closed", "FpWindow": "Closed", "RdWindow": "Closed"}, T0))
    assert store.get(VIN).value("windows_open") is None
    source.apply(v({"RdWindow": "Opened"}, T0 + timedelta(0, 1)))
    assert store.get(VIN).value("windows_open") is True


def test_the_charge_current_maximum_comes_from_fleet_telemetry(source, store):
    source.apply(v({"ChargeCurrentRequestMax": 48, "ChargeCurrentRequest": 32}, T0))
    state = store.get(VIN)
    assert state.value("charge_current_request_max_a") == 48
    assert state.value("charge_current_request_a") == 32


def test_resend_with_older_values_never_overwrites(source, store):
    source.apply(v({"BatteryLevel": 70.0, "Odometer": 100.0}, T0 + timedelta(minutes=5)))
    # The car resends what it had not had acknowledged, from before.
    applied = source.apply(v({"BatteryLevel": 60.0, "Odometer": 90.0}, T0, is_resend=True))
    assert applied.changed == [] and applied.stale == 2
    assert store.get(VIN).value("battery_level") == 70.0
    # A resend newer than what is known is real news.
    source.apply(v({"BatteryLevel": 69.0}, T0 + timedelta(minutes=6), is_resend=True))
    assert store.get(VIN).value("battery_level") == 69.0


def test_duplicated_record_changes_nothing(source):
    record = v({"BatteryLevel": 70.0, "Gear": "D"}, T0)
    assert source.apply(record).changed
    again = source.apply(record)
    assert again.changed == [] and not again.touched


def test_invalid_from_the_car_follows_the_field_policy(source, store):
    source.apply(v({"Gear": "D", "TimeToFullCharge": 2.5}, T0))
    source.apply(v({"Gear": INVALID_DATUM, "TimeToFullCharge": INVALID_DATUM}, T0 + timedelta(1)))
    state = store.get(VIN)
    assert state.value("shift_state") == "d"  # a sleeping car keeps its last gear
    assert state.value("time_to_full_charge_h") is None  # not charging: no estimate


def test_signals_unknown_to_the_catalogue_become_extra_fields(source, store):
    applied = source.apply(v({"LateralAcceleration": 0.12, "Experimental_1": 3.0}, T0))
    assert applied.changed == ["ft_lateral_acceleration", "online"]
    assert store.get(VIN).value("ft_lateral_acceleration") == pytest.approx(0.12)


def test_online_from_connections_and_proof_of_life(source, store):
    at = T0.timestamp()
    source.apply(decoded(connectivity_record(NS, VIN, T0, "c1", True)))
    source.apply(decoded(connectivity_record(NS, VIN, T0 + timedelta(seconds=1), "c2", True)))
    source.apply(decoded(connectivity_record(NS, VIN, T0 + timedelta(seconds=2), "c1", False)))
    assert store.get(VIN).value("online") is True  # c2 is still open
    source.apply(decoded(connectivity_record(NS, VIN, T0 + timedelta(seconds=3), "c2", False)))
    assert store.get(VIN).value("online") is False
    # A DISCONNECTED for a connection never seen says nothing.
    source.apply(v({"BatteryLevel": 50.0}, T0 + timedelta(seconds=10)))
    source.apply(decoded(connectivity_record(NS, VIN, T0 + timedelta(seconds=11), "zz", False)))
    assert store.get(VIN).value("online") is True
    assert source.expire(at + 300) == []
    (went_offline,) = source.expire(at + 10 + 601)
    assert went_offline.changed == ["online"]
    assert store.get(VIN).value("online") is False


def test_a_connection_that_never_closes_goes_stale(source, store):
    source.apply(decoded(connectivity_record(NS, VIN, T0, "c1", True)))
    assert source.expire(T0.timestamp() + 1800) == []
    assert source.expire(T0.timestamp() + 3601)
    assert store.get(VIN).value("online") is False


def test_alerts_are_active_until_they_end(source, store):
    started = T0 - timedelta(minutes=1)
    source.apply(decoded(alerts_record(NS, VIN, T0, [("ChargePortFault", started, None)])))
    source.apply(
        decoded(alerts_record(NS, VIN, T0 + timedelta(1), [("TirePressureLow", started, None)]))
    )
    names = [a["name"] for a in store.get(VIN).value("active_alerts")]
    assert names == ["ChargePortFault", "TirePressureLow"]
    source.apply(
        decoded(
            alerts_record(
                NS, VIN, T0 + timedelta(2), [("ChargePortFault", started, T0 + timedelta(2))]
            )
        )
    )
    assert [a["name"] for a in store.get(VIN).value("active_alerts")] == ["TirePressureLow"]


def test_state_document_round_trips_through_its_snapshot(source, store):
    car = SimulatedCar(VIN)
    source.apply(v(car.signals(everything=True) | {"DoorState": {"DriverFront": True}}, T0))
    source.apply(decoded(alerts_record(NS, VIN, T0, [("A", T0, None)])))
    document = json.loads(json.dumps(state_document(store.get(VIN))))
    # Every field and derived value is present, so simple templates never miss.
    for entity in ENTITIES:
        assert entity.key in document
    for key in FIELDS:
        assert key in document
    restored = StateStore()
    restored.seed(VIN, restore_fields(json.dumps(document).encode()))
    assert restored.get(VIN).values() == store.get(VIN).values()
    assert {k: f.observed_at for k, f in restored.get(VIN).fields.items()} == pytest.approx(
        {k: f.observed_at for k, f in store.get(VIN).fields.items()}
    )


def test_publisher_batches_per_vehicle_and_skips_unchanged(source, store):
    topics = Topics("gm", "homeassistant", "gridmate")
    now = [T0.timestamp()]
    publisher = Publisher(store, topics, {VIN: "Red"}, now=lambda: now[0], touch_interval=60)
    for second in range(5):
        publisher.mark(source.apply(v({"VehicleSpeed": 10.0 + second}, T0 + timedelta(0, second))))
    first = publisher.take()
    # Five records, one state document; a vehicle's first batch has everything
    # (there is no location yet, so no tracker attributes).
    assert [m.topic for m in first.messages] == [
        topics.discovery(VIN),
        topics.alerts(VIN),
        topics.state(VIN),
    ]
    assert json.loads(first.messages[2].payload)["speed_mph"] == 14.0
    config = json.loads(first.messages[0].payload)
    assert config["dev"]["name"] == "Red"
    # The same values again: nothing to publish.
    publisher.mark(source.apply(v({"VehicleSpeed": 14.0}, T0 + timedelta(0, 4))))
    assert publisher.take().messages == []
    # Newer but unchanged values refresh the document only after touch_interval.
    publisher.mark(source.apply(v({"VehicleSpeed": 14.0}, T0 + timedelta(0, 30))))
    assert publisher.take().messages == []
    now[0] += 61
    publisher.mark(source.apply(v({"VehicleSpeed": 14.0}, T0 + timedelta(0, 90))))
    assert [m.topic for m in publisher.take().messages] == [topics.state(VIN)]


def test_new_firmware_field_and_new_name_update_discovery(source, store):
    topics = Topics()
    publisher = Publisher(store, topics, {}, now=lambda: 0.0)
    publisher.mark(source.apply(v({"VehicleName": "Old"}, T0)))
    config = json.loads(publisher.take().messages[0].payload)
    assert config["dev"]["name"] == "Old"
    publisher.mark(source.apply(v({"VehicleName": "New", "HvacFanSpeed": 4.0}, T0 + timedelta(1))))
    batch = publisher.take()
    config = json.loads(batch.messages[0].payload)
    assert batch.messages[0].topic == topics.discovery(VIN)
    assert config["dev"]["name"] == "New"
    extra = config["cmps"][f"{VIN}_ft_hvac_fan_speed"]
    assert extra["en"] is False and extra["ent_cat"] == "diagnostic"


def test_discovery_marks_units_classes_and_diagnostics(store):
    store.update(VIN, "battery_level", 50, 1.0, "x")
    config = discovery_document(VIN, store.get(VIN), Topics(), {})
    cmps = config["cmps"]
    odometer = cmps[f"{VIN}_odometer_mi"]
    assert (odometer["dev_cla"], odometer["unit_of_meas"], odometer["stat_cla"]) == (
        "distance",
        "mi",
        "total_increasing",
    )
    assert cmps[f"{VIN}_tpms_front_left_bar"]["unit_of_meas"] == "bar"
    assert cmps[f"{VIN}_inside_temp_c"]["unit_of_meas"] == "°C"
    assert cmps[f"{VIN}_software_version"]["ent_cat"] == "diagnostic"
    assert cmps[f"{VIN}_locked"]["pl_on"] == "False"  # a lock is "on" when unlocked
    assert cmps[f"{VIN}_location"]["p"] == "device_tracker"
    assert config["avty"] == [{"t": "gridmate/status"}]


def _announced(message) -> set[str]:
    return {key.split("_", 1)[1] for key in json.loads(message.payload)["cmps"]}


def test_an_entity_is_announced_once_a_source_delivered_its_field(source, store):
    topics = Topics()
    publisher = Publisher(store, topics, {}, now=lambda: 0.0)
    publisher.mark(source.apply(v({"VehicleSpeed": 10.0}, T0)))
    announced = _announced(publisher.take().messages[0])
    # Speed, and what every car has (when, from where, how many alerts: 0).
    assert announced == {"speed_mph", "driving", "online", "last_update", "data_source",
                         "active_alert_count"}  # fmt: skip
    assert state_document(store.get(VIN))["active_alert_count"] == 0
    # A field delivered for the first time: discovery again, with its entity.
    publisher.mark(source.apply(v({"Odometer": 1200.5}, T0 + timedelta(0, 5))))
    batch = publisher.take()
    assert batch.messages[0].topic == topics.discovery(VIN)
    assert "odometer_mi" in _announced(batch.messages[0])
    # Remembered across a restart: the retained state document brings the fields back.
    payload = next(m.payload for m in batch.messages if m.topic == topics.state(VIN))
    restored = StateStore(invalid_policies())
    restored.seed(VIN, restore_fields(payload))
    again = Publisher(restored, topics, {}, now=lambda: 0.0)
    again.mark_vehicles([VIN])
    assert "odometer_mi" in _announced(again.take().messages[0])


def test_announce_all_entities_announces_the_whole_catalogue(source, store):
    publisher = Publisher(store, Topics(), {}, now=lambda: 0.0, announce_all=True)
    publisher.mark(source.apply(v({"VehicleSpeed": 10.0}, T0)))
    assert _announced(publisher.take().messages[0]) == {e.key for e in ENTITIES}


def test_a_configured_configuration_url_is_the_devices_link(source, store):
    publisher = Publisher(
        store, Topics(), {}, now=lambda: 0.0, configuration_url="https://grafana.example/d/car"
    )
    publisher.mark(source.apply(v({"VehicleSpeed": 10.0}, T0)))
    config = json.loads(publisher.take().messages[0].payload)
    assert config["dev"]["cu"] == "https://grafana.example/d/car"
    assert "url" not in config["o"]  # no support URL configured


def test_a_configured_support_url_is_every_documents_origin_link(source, store):
    support = "https://git.example/gridmate/issues"
    publisher = Publisher(
        store, Topics(), {}, now=lambda: 0.0, support_url=support, notifications=True
    )
    publisher.mark(source.apply(v({"VehicleSpeed": 10.0}, T0)))
    documents = [
        json.loads(m.payload) for m in publisher.take().messages if m.topic.endswith("/config")
    ]
    assert len(documents) == 2  # the car and the hub device
    assert all(document["o"]["url"] == support for document in documents)


def test_the_hub_device_carries_notifications_as_an_event_entity(source, store):
    from gridmate.notify import Event, EventKind

    topics = Topics()
    publisher = Publisher(store, topics, {}, now=lambda: 0.0, notifications=True)
    assert publisher.pending  # the hub device is announced even before any car
    first = publisher.take()
    assert [m.topic for m in first.messages] == [topics.hub_discovery]
    config = json.loads(first.messages[0].payload)
    (component,) = config["cmps"].values()
    assert component["p"] == "event" and component["evt_typ"] == ["info", "warning", "critical"]
    assert component["stat_t"] == topics.notifications
    event = Event(EventKind.telemetry_stale, "Telemetry stale", "No data.", "Switched.")
    publisher.notification(event)
    batch = publisher.take()
    (message,) = batch.messages
    assert message.topic == topics.notifications and message.retain is False
    payload = json.loads(message.payload)
    assert payload["title"] == "Telemetry stale" and payload["kind"] == "telemetry_stale"
    assert payload["event_type"] == event.effective_level.value
    publisher.failed(batch)  # not delivered: sent with the next batch
    assert [m.topic for m in publisher.take().messages] == [topics.notifications]
    publisher.republish_all()  # Home Assistant came online
    assert [m.topic for m in publisher.take().messages] == [topics.hub_discovery]
