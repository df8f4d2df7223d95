"""The ``vehicles`` component: ``gridmate vehicles run``."""

from __future__ import annotations

import asyncio
import contextlib

from gridmate.notify import Notifier
from gridmate.notify.failures import resolve_failure
from gridmate.runtime.component import Component
from gridmate.runtime.daemon import Daemon
from gridmate.tesla.settings import build_fleet_api, build_token_provider
from gridmate.vehicles.hub import Hub
from gridmate.vehicles.settings import VehiclesSettings


def _sources(settings: VehiclesSettings) -> str:
    names = []
    if settings.kafka is not None:
        names.append(f"Fleet Telemetry (Kafka {settings.kafka.namespace}_*)")
    if settings.teslamate.enable:
        names.append("TeslaMate")
    if settings.polling.enable and settings.tesla.token_source != "none":
        names.append("Tesla API polling")
    return ", ".join(names)


async def run(settings: VehiclesSettings, daemon: Daemon) -> None:
    tokens = build_token_provider(
        settings.tesla, settings.state_directory, clock=daemon.clock, registry=daemon.registry
    )
    fleet_api = None
    # Polling reads cars through it, the car controls send their commands through it.
    if tokens is not None and (settings.polling.enable or settings.controls.enable):
        fleet_api = build_fleet_api(
            settings.tesla, tokens, clock=daemon.clock, registry=daemon.registry,
            state_directory=settings.state_directory / "vehicles",
        )  # fmt: skip
    notifier = None
    if settings.notify.enabled:
        notifier = Notifier(
            settings.notify,
            settings.state_directory,
            clock=daemon.clock,
            registry=daemon.registry,
            source="vehicles",
        )
        await notifier.start()
    hub = Hub(
        settings,
        clock=daemon.clock,
        registry=daemon.registry,
        stop=daemon.stop,
        status=daemon.status,
        fleet_api=fleet_api,
        notifier=notifier,
    )
    if settings.kafka is not None:
        daemon.add_health_check("kafka", hub.health_kafka)
    daemon.add_health_check("mqtt", hub.health_mqtt)
    background = []
    if hub.sources is not None and hub.sources.teslamate is not None:
        daemon.add_health_check("teslamate", hub.sources.health_teslamate)
    if hub.sources is not None and hub.sources.polling is not None:
        daemon.add_health_check("tesla_api", hub.sources.health_polling)
    if tokens is not None:
        daemon.add_health_check("tesla_token", tokens.health)  # type: ignore[attr-defined]
        background.append(asyncio.create_task(tokens.run(daemon.stop)))  # type: ignore[attr-defined]

    async def announce_ready() -> None:
        await hub.ready.wait()
        daemon.ready(
            f"Vehicles from {_sources(settings)}, published to MQTT "
            f"{settings.mqtt.host}:{settings.mqtt.port}"
        )
        if notifier is not None:
            await resolve_failure(notifier, "vehicles")

    announcer = asyncio.create_task(announce_ready())
    try:
        await hub.run()
    finally:
        announcer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await announcer
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
        if fleet_api is not None:
            await fleet_api.aclose()
        if notifier is not None:
            await notifier.close()


component = Component(
    name="vehicles",
    summary="Tesla vehicles (Fleet Telemetry, TeslaMate, Tesla API) to Home Assistant over MQTT",
    description=(
        "Consumes the records Tesla's fleet-telemetry server writes to Kafka "
        "(<namespace>_V, _connectivity, _alerts, _errors) and gives Home Assistant one "
        "device per vehicle through MQTT discovery: location, charging, battery, "
        "climate, doors, tyres, alerts. Delivery is at least once: Kafka offsets are "
        "committed only after the MQTT broker acknowledged what they caused. TeslaMate's "
        "MQTT topics and, as a last resort, Tesla API polling (never waking a car) fill in "
        "per vehicle when Fleet Telemetry is absent or stale; see docs/teslamate.md."
    ),
    settings_model=VehiclesSettings,
    run=run,
)
