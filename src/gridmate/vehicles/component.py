"""The ``vehicles`` component: ``gridmate vehicles run``."""

from __future__ import annotations

import asyncio
import contextlib

from gridmate.runtime.component import Component
from gridmate.runtime.daemon import Daemon
from gridmate.vehicles.hub import Hub
from gridmate.vehicles.settings import VehiclesSettings


async def run(settings: VehiclesSettings, daemon: Daemon) -> None:
    hub = Hub(
        settings,
        clock=daemon.clock,
        registry=daemon.registry,
        stop=daemon.stop,
        status=daemon.status,
    )
    daemon.add_health_check("kafka", hub.health_kafka)
    daemon.add_health_check("mqtt", hub.health_mqtt)

    async def announce_ready() -> None:
        await hub.ready.wait()
        daemon.ready(
            f"Consuming {settings.kafka.namespace}_* from Kafka, publishing to MQTT "
            f"{settings.mqtt.host}:{settings.mqtt.port}"
        )

    announcer = asyncio.create_task(announce_ready())
    try:
        await hub.run()
    finally:
        announcer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await announcer


component = Component(
    name="vehicles",
    summary="Tesla Fleet Telemetry from Kafka to Home Assistant over MQTT",
    description=(
        "Consumes the records Tesla's fleet-telemetry server writes to Kafka "
        "(<namespace>_V, _connectivity, _alerts, _errors) and gives Home Assistant one "
        "device per vehicle through MQTT discovery: location, charging, battery, "
        "climate, doors, tyres, alerts. Delivery is at least once: Kafka offsets are "
        "committed only after the MQTT broker acknowledged what they caused."
    ),
    settings_model=VehiclesSettings,
    run=run,
)
