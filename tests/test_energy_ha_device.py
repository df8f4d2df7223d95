"""The energy manager as a Home Assistant device: discovery, state and commands.

Against Mosquitto and the energy simulators (Tesla cloud, Honeywell, weather, gateway),
read back the way Home Assistant reads it (gridmate.homeassistant.view), with commands
published where Home Assistant publishes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime

import aiomqtt
import pytest
from test_energy_reconciler import PHOENIX, World, world

from gridmate.energy.controls import Controls, effective_config
from gridmate.energy.homeassistant import (
    COMMANDS,
    EnergyDevice,
    EnergyTopics,
    apply_command,
    discovery_document,
)
from gridmate.energy.service import health_problems, start_home_assistant_device
from gridmate.energy.settings import HomeAssistantDeviceSettings
from gridmate.homeassistant.view import HomeAssistantView
from gridmate.notify import NotifySettings
from gridmate.runtime.logs import configure_logging
from gridmate.runtime.settings import MqttSettings

DEVICE = "gridmate energy"


@dataclass
class Rig:
    w: World
    device: EnergyDevice
    view: HomeAssistantView
    wake: asyncio.Event
    settings: HomeAssistantDeviceSettings

    async def cycle(self) -> None:
        """One minute later, one control cycle, and its state published."""
        self.w.clock.advance(60)
        self.w.house.step(self.w.clock.now())
        report = await self.w.runtime.reconciler.cycle()
        await self.w.runtime.after_cycle(report)  # notifications
        self.device.observe(report, health_problems(self.w.runtime, report))

    async def run_until(self, hour: int, minute: int = 0) -> None:
        target = self.w.clock.now().replace(hour=hour, minute=minute)
        while self.w.clock.now() < target:
            await self.cycle()

    async def command(self, name: str, payload: str) -> None:
        self.wake.clear()
        await self.view.wait_for(lambda e: (DEVICE, name) in e)
        await self.view.command(DEVICE, name, payload)

    async def shows(self, name: str, value: object) -> None:
        await self.view.wait_for(lambda e: (DEVICE, name) in e and e[(DEVICE, name)].state == value)


@contextlib.asynccontextmanager
async def rig(
    tmp_path,
    mqtt_broker,
    *,
    retained_commands: dict[str, bytes] | None = None,
    prefix: str | None = None,
    clear: bool = True,
    **world_changes,
) -> AsyncIterator[Rig]:
    prefix = prefix or mqtt_broker.topic_prefix()
    settings = HomeAssistantDeviceSettings(
        enable=True,
        mqtt=MqttSettings(host=mqtt_broker.host, port=mqtt_broker.port),
        base_topic=prefix,
        discovery_prefix=f"{prefix}-ha",
    )
    if retained_commands:
        # Left on the broker by some client before gridmate connected.
        topics = EnergyTopics(prefix, f"{prefix}-ha", settings.node_name, settings.site)
        async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as other:
            for key, payload in retained_commands.items():
                await other.publish(topics.command(key), payload, qos=1, retain=True)
    async with world(tmp_path, ha_device=settings, **world_changes) as w:
        stop = asyncio.Event()
        # As the service starts it: a background task of the runtime.
        device, wake = start_home_assistant_device(w.runtime, clock=w.clock, stop=stop)
        assert device is not None and wake is not None
        task = w.runtime.background[-1]
        view = HomeAssistantView(
            mqtt_broker.host, mqtt_broker.port, base=prefix, discovery_prefix=f"{prefix}-ha"
        )
        async with view.running():
            try:
                await asyncio.wait_for(device.link.connected.wait(), 10)
                yield Rig(w, device, view, wake, settings)
            finally:
                stop.set()
                with contextlib.suppress(asyncio.CancelledError):  # a restart cancelled it
                    await asyncio.wait_for(task, 15)
                if clear:
                    await _clear_retained(mqtt_broker, prefix)


async def _clear_retained(mqtt_broker, prefix: str) -> None:
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as client:
        topics: set[str] = set()
        await client.subscribe(f"{prefix}/#")
        await client.subscribe(f"{prefix}-ha/#")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                async for message in client.messages:
                    topics.add(str(message.topic))
        for topic in topics:
            await client.publish(topic, b"", retain=True)


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    configure_logging("info", "text", stream)
    try:
        yield stream
    finally:
        logging.getLogger().handlers.clear()


async def test_the_energy_manager_is_one_device_with_its_state_and_controls(tmp_path, mqtt_broker):
    async with rig(tmp_path, mqtt_broker, start=(16, 20)) as r:
        await r.run_until(16, 25)  # the reserve was written and read back
        await r.shows("Backup reserve", 0.0)
        entities = r.view.entities()
        names = {name for device, name in entities if device == DEVICE}
        assert {
            "Tariff period", "Next peak start", "Next peak end", "Peak active",
            "Powerwall battery", "Backup reserve", "Planned backup reserve", "Operation mode",
            "Thermostat setback step", "Precool today", "Grid import during today's peaks",
            "Estimated saving today", "Powerwall writes left today", "Health", "Today's plan",
            "Peak control", "Dry run", "Skip precool today", "End today's peak control now",
            "Peak reserve", "Precool threshold",
        } <= names  # fmt: skip
        assert "Failover role" not in names  # failover is off
        values = {name: entities[(DEVICE, name)].state for name in names}
        assert values["Tariff period"] == "peak"
        assert values["Backup reserve"] == 0.0 and values["Operation mode"] == "self_consumption"
        assert values["Peak control"] == "on" and values["Dry run"] == "off"
        assert values["Peak reserve"] == 0.0 and values["Precool threshold"] == 95.0
        assert values["Powerwall battery"] is not None
        assert values["Next peak start"].astimezone(PHOENIX).hour == 16  # the current block
        assert values["Next peak end"].astimezone(PHOENIX).hour == 19
        precool = entities[(DEVICE, "Precool today")]
        assert "reason" in precool.attributes
        plan = entities[(DEVICE, "Today's plan")]
        assert any("Powerwall reserve 0 %" in line for line in plan.attributes["timeline"])
        assert all(e.available for (device, _), e in entities.items() if device == DEVICE)


async def test_switching_peak_control_off_restores_once_then_writes_nothing(tmp_path, mqtt_broker):
    async with rig(tmp_path, mqtt_broker, start=(16, 20)) as r:
        w = r.w
        await r.run_until(16, 40)
        assert (w.site.backup_reserve_percent, w.site.operation_mode) == (0, "self_consumption")
        await r.shows("Peak control", "on")

        await r.command("Peak control", "OFF")
        await asyncio.wait_for(r.wake.wait(), 10)  # stored and the loop woken
        assert w.runtime.reconciler.state.controls.peak_control is False
        await r.cycle()
        await r.cycle()
        assert (w.site.backup_reserve_percent, w.site.operation_mode) == (30, "autonomous")
        await r.shows("Peak control", "off")
        await r.shows("Peak active", "off")
        writes = len(w.site.writes)
        thermostat_writes = len(w.thermostat.writes)
        await r.run_until(19, 30)
        assert len(w.site.writes) == writes and len(w.thermostat.writes) == thermostat_writes

        # The switch survives a restart (and so a failover: it is in state.json).
        await w.restart()
        assert w.runtime.reconciler.state.controls.peak_control is False


async def test_refused_and_retained_commands_change_nothing_and_the_state_snaps_back(
    tmp_path, mqtt_broker, log_stream
):
    retained = {"dry_run": b"ON", "peak_control": b"OFF"}
    async with rig(tmp_path, mqtt_broker, start=(12, 0), retained_commands=retained) as r:
        await asyncio.wait_for(_until(lambda: "retained command" in log_stream.getvalue()), 10)
        await r.cycle()
        await r.shows("Peak reserve", 0.0)
        await r.shows("Dry run", "off")
        await r.shows("Peak control", "on")
        published = r.view.config_messages
        await r.command("Peak reserve", "90")  # the Powerwall refuses 81-99 %
        await r.view.wait_for(lambda e: "refused" in log_stream.getvalue())
        assert "90 % is refused by the Powerwall" in log_stream.getvalue()
        assert r.w.runtime.reconciler.state.controls == Controls()
        assert r.view.config_messages == published  # a state refresh, not a rediscovery

        await r.command("Peak reserve", "40")
        await asyncio.wait_for(r.wake.wait(), 10)
        await r.cycle()
        await r.shows("Peak reserve", 40.0)
        await r.shows("Planned backup reserve", 40.0)
        await r.run_until(16, 10)
        assert r.w.site.backup_reserve_percent == 40


async def test_a_standby_node_ignores_commands(tmp_path, mqtt_broker, log_stream):
    async with rig(tmp_path, mqtt_broker, start=(12, 0)) as r:
        await r.cycle()
        await r.shows("Peak control", "on")
        energy = r.w.settings.energy_directory
        (energy / "failover-state").write_text("BACKUP\n")  # keepalived made it the standby
        await r.command("Peak control", "OFF")
        await asyncio.wait_for(_until(lambda: "failover standby" in log_stream.getvalue()), 10)
        assert r.w.runtime.reconciler.state.controls.peak_control is True


async def test_skip_precool_today_and_end_todays_peak_control(tmp_path, mqtt_broker):
    async with rig(tmp_path, mqtt_broker, start=(15, 0)) as r:
        w = r.w
        await r.cycle()
        await r.command("Skip precool today", "PRESS")
        await asyncio.wait_for(r.wake.wait(), 10)
        await r.run_until(15, 50)
        assert w.thermostat.writes == []  # a 100 °F day, but no precool
        precool = r.view.entities()[(DEVICE, "Precool today")]
        assert precool.state == "off" and precool.attributes["skipped_today"] is True

        await r.run_until(16, 30)
        assert w.site.backup_reserve_percent == 0
        await r.command("End today's peak control now", "PRESS")
        await asyncio.wait_for(r.wake.wait(), 10)
        await r.cycle()
        await r.cycle()
        assert (w.site.backup_reserve_percent, w.site.operation_mode) == (30, "autonomous")
        writes = len(w.site.writes)
        await r.run_until(19, 30)
        assert len(w.site.writes) == writes


def test_configured_links_are_the_devices_visit_and_support_links():
    topics = EnergyTopics()
    plain = discovery_document(topics, HomeAssistantDeviceSettings(), failover=False)
    assert "cu" not in plain["dev"] and "url" not in plain["o"]
    settings = HomeAssistantDeviceSettings(
        configuration_url="https://grafana.example/d/energy",
        support_url="https://git.example/gridmate/issues",
    )
    linked = discovery_document(topics, settings, failover=False)
    assert linked["dev"]["cu"] == "https://grafana.example/d/energy"
    assert linked["o"]["url"] == "https://git.example/gridmate/issues"
    with pytest.raises(ValueError, match="support_url"):
        HomeAssistantDeviceSettings(support_url="git.example/issues")


def test_commands_map_onto_the_controls():
    today = date(2026, 7, 1)
    at = datetime(2026, 7, 1, 20, 0, tzinfo=UTC)
    controls = Controls()
    for key, value in (
        ("peak_control", False),
        ("dry_run", True),
        ("peak_reserve", 100.0),
        ("precool_threshold", 99.5),
        ("skip_precool", None),
        ("end_peak", None),
    ):
        assert key in COMMANDS
        controls = apply_command(controls, key, value, today, at)
    assert controls == Controls(False, True, 100, 99.5, today, today, at)
    assert Controls.from_json(controls.to_json()) == controls


def test_controls_change_the_planner_config_only_for_their_day(tmp_path):
    from gridmate.energy.service import planner_config
    from gridmate.energy.settings import EnergySettings

    config = planner_config(EnergySettings(state_directory=tmp_path))
    today = date(2026, 7, 1)
    controls = Controls(peak_reserve_percent=50, precool_threshold_f=90.0, skip_precool_day=today)
    effective = effective_config(config, controls, today)
    assert effective.reserve.peak_reserve_percent == 50
    assert effective.policy.precool_threshold_f == 90.0 and effective.policy.precool is False
    tomorrow = effective_config(config, controls, date(2026, 7, 2))
    assert tomorrow.policy.precool is True


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.01)


async def test_notifications_fire_the_event_entity(tmp_path, mqtt_broker):
    async with rig(tmp_path, mqtt_broker, start=(15, 55), notify=NotifySettings()) as r:
        async with aiomqtt.Client(r.view.host, r.view.port) as listener:
            await listener.subscribe(r.device.topics.notifications, qos=1)
            await r.run_until(16, 2)  # the peak starts: "Peak period started"
            async with asyncio.timeout(10):
                async for message in listener.messages:
                    assert not message.retain  # an event happens once
                    payload = json.loads(message.payload)
                    if payload["kind"] == "peak_started":
                        break
        assert payload["event_type"] == "info" and payload["title"] == "Peak period started"
        assert "battery" in payload["text"]
        entity = r.view.entities()[(DEVICE, "Notifications")]
        assert entity.platform == "event"
        assert entity.config["event_types"] == ["info", "warning", "critical"]


async def test_the_other_node_of_a_failover_pair_takes_the_controls_over(tmp_path, mqtt_broker):
    prefix = mqtt_broker.topic_prefix()
    async with rig(tmp_path / "a", mqtt_broker, start=(12, 0), prefix=prefix, clear=False) as r:
        await r.cycle()
        await r.command("Peak control", "OFF")
        await asyncio.wait_for(r.wake.wait(), 10)
        await r.cycle()
        await r.shows("Peak control", "off")
    # The other host: its own state directory, the same broker.
    async with rig(tmp_path / "b", mqtt_broker, start=(12, 5), prefix=prefix) as r:
        await asyncio.wait_for(r.wake.wait(), 10)  # taken over, and the loop woken
        assert r.w.runtime.reconciler.state.controls.peak_control is False
        await r.run_until(16, 30)
        assert r.w.site.writes == []  # the peak is not controlled
        await r.shows("Peak control", "off")


async def test_a_stopping_service_says_offline(tmp_path, mqtt_broker):
    async with rig(tmp_path, mqtt_broker, start=(12, 0)) as r:
        await r.cycle()
        await r.shows("Peak control", "on")
        r.device.stop.set()  # the daemon stops ...
        await r.w.runtime.close()  # ... and the service closes its runtime
        await r.view.wait_for(
            lambda e: not e[(DEVICE, "Peak control")].available, within=10
        )  # a clean disconnect sends no last will: "offline" was published
        assert r.view.retained[r.device.topics.status] == b"offline"
