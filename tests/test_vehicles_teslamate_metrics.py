"""TeslaMate's health as the vehicles hub exports it (gridmate.vehicles.sources.teslamate_metrics),
from a simulated TeslaMate over a real Mosquitto, with its tables in a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gridmate.runtime.clock import SimulatedClock
from gridmate.sim.teslamate import (
    TeslaMateCarModel,
    clear_retained,
    create_teslamate_schema,
    simulated_teslamate,
)
from gridmate.vehicles.arbitration import SourceFacts
from gridmate.vehicles.sources.settings import TeslaMateSourceSettings
from gridmate.vehicles.sources.teslamate import TeslaMateSource
from gridmate.vehicles.sources.teslamate_cars import TeslaMateDatabase
from gridmate.vehicles.sources.teslamate_metrics import database_lag_seconds

VIN = "5YJ3E1EA7KF000001"


def test_database_lag_counts_from_the_last_live_message_or_the_subscription():
    assert database_lag_seconds(None, last_live=100.0, session_started=50.0) is None
    assert database_lag_seconds(160.0, last_live=100.0, session_started=50.0) == 60.0
    # the retained snapshot at the subscription covers older rows
    assert database_lag_seconds(160.0, last_live=None, session_started=150.0) == 10.0
    assert database_lag_seconds(90.0, last_live=100.0, session_started=None) == 0.0


async def _until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), 10)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.mark.services
async def test_teslamate_health_metrics_follow_mqtt_and_the_database(
    mqtt_broker: Any, postgres_dsn: str
) -> None:
    await create_teslamate_schema(postgres_dsn)
    namespace = mqtt_broker.topic_prefix()
    clock = SimulatedClock(datetime.now(UTC))
    registry = CollectorRegistry()
    facts: dict[str, SourceFacts] = {}
    source = TeslaMateSource(
        TeslaMateSourceSettings(
            enable=True,
            namespace=namespace,
            mqtt={"host": mqtt_broker.host, "port": mqtt_broker.port},
        ),
        offer=lambda _source, _vin, _values: None,
        facts=lambda vin: facts.setdefault(vin, SourceFacts()),
        clock=clock,
        registry=registry,
        database=TeslaMateDatabase(postgres_dsn),
    )
    car = TeslaMateCarModel(1, VIN, name="Red", state="charging", charger_power=11.0)
    stop = asyncio.Event()
    async with simulated_teslamate(
        mqtt_broker.host,
        mqtt_broker.port,
        [car],
        namespace=namespace,
        clock=clock,
        database=postgres_dsn,
    ) as teslamate:
        task = asyncio.create_task(source.run(stop))
        try:
            await _until(source.connected.is_set)
            assert _value(registry, "gridmate_vehicles_teslamate_connected") == 1.0
            # The retained snapshot: the car is known, its health is not (not retained).
            await _until(lambda: source.cars.get(1) is not None)
            metric = "gridmate_vehicles_teslamate_last_message_age_seconds"
            await _until(lambda: _value(registry, metric, vin=VIN) is not None)
            assert _value(registry, "gridmate_vehicles_teslamate_healthy", vin=VIN) is None

            # A live summary says healthy; then TeslaMate's Tesla API access fails.
            await teslamate.summary(1)
            healthy = "gridmate_vehicles_teslamate_healthy"
            await _until(lambda: _value(registry, healthy, vin=VIN) == 1.0)
            car.healthy = False
            await teslamate.summary(1)
            await _until(lambda: _value(registry, healthy, vin=VIN) == 0.0)

            # The database has nothing newer than what MQTT delivered.
            await source.check_database()
            lag = "gridmate_vehicles_teslamate_database_lag_seconds"
            assert _value(registry, lag, vin=VIN) == 0.0

            # Ten minutes later TeslaMate still polls and writes, but its MQTT is gone.
            clock.jump_to(clock.now() + timedelta(minutes=10))
            assert _value(registry, metric, vin=VIN) == pytest.approx(600, abs=30)
            teslamate.mqtt_broken = True
            await teslamate.summary(1)
            await source.check_database()
            assert _value(registry, lag, vin=VIN) == pytest.approx(600, abs=30)
            assert "gridmate_vehicles_teslamate_healthy{vin=" in generate_latest(registry).decode()
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        assert _value(registry, "gridmate_vehicles_teslamate_connected") == 0.0
    await clear_retained(
        mqtt_broker.host, mqtt_broker.port, {t for t, _p, retain in teslamate.published if retain}
    )


@pytest.mark.services
async def test_simulated_teslamate_logs_in_to_a_broker_that_wants_it(tmp_path: Any) -> None:
    """As TeslaMate with MQTT_USERNAME/MQTT_PASSWORD (the NixOS module's broker has no
    anonymous access): refused without them, publishing with them."""
    import aiomqtt

    from gridmate.sim.brokers import mosquitto_broker, write_mosquitto_password_file

    passwords = write_mosquitto_password_file(
        tmp_path / "passwd", {"teslamate": "tm-secret", "reader": "r-secret"}
    )
    car = TeslaMateCarModel(1, VIN, name="Red", state="online")
    async with mosquitto_broker(password_file=passwords) as (host, port):
        with pytest.raises(aiomqtt.MqttError):
            async with simulated_teslamate(host, port, [car]):
                pass
        async with aiomqtt.Client(host, port, username="reader", password="r-secret") as reader:
            await reader.subscribe("teslamate/cars/1/state", qos=1)
            async with simulated_teslamate(
                host, port, [car], username="teslamate", password="tm-secret"
            ):
                async for message in reader.messages:
                    assert message.payload == b"online"
                    break
