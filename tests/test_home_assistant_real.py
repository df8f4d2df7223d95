"""gridmate against a real Home Assistant (opt-in tier).

Runs the newest Home Assistant from PyPI in the Debian 13 root that
``scripts/prepare-home-assistant`` builds (``~/.cache/gridmate/home-assistant/root``
or ``$GRIDMATE_HOME_ASSISTANT_ROOT``); skips, saying so, when that root is absent.
Home Assistant runs with a clean environment, ``--skip-pip`` and its HTTP server on
loopback, against a private Mosquitto; its MQTT config entry is written into
``.storage/core.config_entries`` before the first start (no onboarding). Two small
automations stand in for a user at the UI: one turns the "Peak control" switch off
(Home Assistant's own switch.turn_off, which publishes the command), one publishes
the states of gridmate's entities so the test can wait for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest
from test_energy_reconciler import world

from gridmate.energy.homeassistant import EnergyDevice
from gridmate.energy.service import health_problems
from gridmate.energy.settings import HomeAssistantDeviceSettings
from gridmate.runtime.settings import MqttSettings

ROOT = Path(
    os.environ.get(
        "GRIDMATE_HOME_ASSISTANT_ROOT",
        Path.home() / ".cache" / "gridmate" / "home-assistant" / "root",
    )
)
HASS = "/opt/homeassistant/bin/hass"
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

pytestmark = [
    pytest.mark.skipif(
        not (ROOT / HASS.lstrip("/")).exists(),
        reason=f"no Home Assistant root at {ROOT}: run scripts/prepare-home-assistant",
    ),
    pytest.mark.skipif(
        os.geteuid() != 0, reason="running Home Assistant in its Debian 13 root needs chroot"
    ),
]

PEAK_CONTROL = "switch.gridmate_energy_peak_control"
CHARGE_LIMIT = "number.blue_charge_limit_control"
SKIP_PIP_WARNING = "Skipping pip installation of required modules"
"""The one warning allowed: the tier's own --skip-pip, which keeps Home Assistant off PyPI."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _configuration(http_port: int, *, prefix: str, units: str) -> str:
    dump = (
        "{% set ns = namespace(d={}) %}"
        f"{{% for s in states if s.entity_id.split('.')[1].startswith('{prefix}') %}}"
        "{% set ns.d = dict(ns.d, **{s.entity_id: s.state}) %}{% endfor %}"
        "{{ ns.d | tojson }}"
    )
    fired = (
        "{{ {'entity_id': trigger.event.data.entity_id,"
        " 'state': trigger.event.data.new_state.state,"
        " 'attributes': trigger.event.data.new_state.attributes} | tojson }}"
    )
    ours = (
        "{{ trigger.event.data.entity_id.startswith('event.gridmate_')"
        " and trigger.event.data.new_state is not none }}"
    )
    return f"""\
homeassistant:
  name: gridmate test
  latitude: 33.45
  longitude: -112.07
  elevation: 331
  unit_system: {units}
  time_zone: America/Phoenix
  currency: USD
  country: US
  language: en
http:
  server_host: 127.0.0.1
  server_port: {http_port}
logger:
  default: warning
automation:
  - alias: switch peak control off
    triggers:
      - trigger: mqtt
        topic: gridmate-test/peak-control-off
    actions:
      - action: switch.turn_off
        target:
          entity_id: {PEAK_CONTROL}
  - alias: set the car's charge limit
    triggers:
      - trigger: mqtt
        topic: gridmate-test/charge-limit
    actions:
      - action: number.set_value
        target:
          entity_id: {CHARGE_LIMIT}
        data:
          value: 85
  - alias: publish gridmate states
    triggers:
      - trigger: mqtt
        topic: gridmate-test/dump
    actions:
      - action: mqtt.publish
        data:
          topic: gridmate-test/states
          payload: "{dump}"
  - alias: publish gridmate events
    triggers:
      - trigger: event
        event_type: state_changed
    conditions:
      - condition: template
        value_template: "{ours}"
    actions:
      - action: mqtt.publish
        data:
          topic: gridmate-test/events
          payload: "{fired}"
"""


def _config_entries(port: int) -> dict:
    now = datetime.now(UTC).isoformat()
    return {
        "version": 1,
        "minor_version": 5,
        "key": "core.config_entries",
        "data": {
            "entries": [
                {
                    "created_at": now,
                    "modified_at": now,
                    "data": {"broker": "127.0.0.1", "port": port},
                    "options": {
                        "discovery": True,
                        "discovery_prefix": "homeassistant",
                        "birth_message": {
                            "topic": "homeassistant/status",
                            "payload": "online",
                            "qos": 0,
                            "retain": False,
                        },
                        "will_message": {
                            "topic": "homeassistant/status",
                            "payload": "offline",
                            "qos": 0,
                            "retain": False,
                        },
                    },
                    "discovery_keys": {},
                    "disabled_by": None,
                    "domain": "mqtt",
                    "entry_id": uuid.uuid4().hex[:26].upper(),
                    "minor_version": 2,
                    "pref_disable_new_entities": False,
                    "pref_disable_polling": False,
                    "source": "user",
                    "subentries": [],
                    "title": "127.0.0.1",
                    "unique_id": None,
                    "version": 1,
                }
            ]
        },
    }


@contextlib.asynccontextmanager
async def home_assistant(
    broker_port: int, *, prefix: str = "gridmate_energy", units: str = "us_customary"
):
    """Home Assistant in its root; yields the config directory (as seen from the host)."""
    name = f"gridmate-ha-{uuid.uuid4().hex[:10]}"
    config = ROOT / "tmp" / name
    (config / ".storage").mkdir(parents=True)
    (config / "configuration.yaml").write_text(
        _configuration(_free_port(), prefix=prefix, units=units)
    )
    (config / ".storage" / "core.config_entries").write_text(
        json.dumps(_config_entries(broker_port))
    )
    output = (config / "stdout.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        "chroot", str(ROOT), "/usr/bin/env", "-i", f"PATH={CLEAN_PATH}", "HOME=/root",
        "LANG=C.UTF-8", HASS, "--config", f"/tmp/{name}", "--skip-pip",
        stdout=output, stderr=asyncio.subprocess.STDOUT, env={"PATH": CLEAN_PATH},
    )  # fmt: skip
    try:
        yield config, process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()
        output.close()
        if os.environ.get("GRIDMATE_KEEP_HOME_ASSISTANT") != "1":
            shutil.rmtree(config, ignore_errors=True)


def _log_lines(config: Path) -> list[str]:
    lines = []
    for path in (config / "home-assistant.log", config / "stdout.log"):
        if path.exists():
            lines += path.read_text(errors="replace").splitlines()
    return lines


def _problems(config: Path) -> list[str]:
    """Home Assistant's warnings, errors and tracebacks (but the one --skip-pip causes)."""
    return [
        line
        for line in _log_lines(config)
        if (" WARNING " in line or " ERROR " in line or "Traceback" in line)
        and SKIP_PIP_WARNING not in line
    ]


@dataclass
class HomeAssistantWatch:
    """What a test sees of Home Assistant over MQTT: its birth message, and on request
    the states of gridmate's entities (published by the dump automation)."""

    tester: aiomqtt.Client
    born: asyncio.Event = field(default_factory=asyncio.Event)
    dumps: asyncio.Queue[dict] = field(default_factory=asyncio.Queue)
    received: dict[str, asyncio.Queue[bytes]] = field(default_factory=dict)
    """Payloads of the further topics watched (``also``), per topic."""
    listener: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, tester: aiomqtt.Client, also: tuple[str, ...] = ()) -> HomeAssistantWatch:
        watch = cls(tester, received={topic: asyncio.Queue() for topic in also})
        for topic in ("homeassistant/status", "gridmate-test/states", *also):
            await tester.subscribe(topic, qos=1)
        watch.listener = asyncio.create_task(watch._listen())
        return watch

    async def _listen(self) -> None:
        async for message in self.tester.messages:
            assert isinstance(message.payload, bytes)
            if message.topic.matches("homeassistant/status") and message.payload == b"online":
                self.born.set()
            elif message.topic.matches("gridmate-test/states"):
                self.dumps.put_nowait(json.loads(message.payload))
            elif message.topic.value in self.received:
                self.received[message.topic.value].put_nowait(message.payload)

    async def states(self, condition: Callable[[dict], bool]) -> dict:
        """Ask Home Assistant for gridmate's entities until ``condition`` holds."""
        while True:
            await self.tester.publish("gridmate-test/dump", b"", qos=1)
            with contextlib.suppress(TimeoutError):
                seen = await asyncio.wait_for(self.dumps.get(), 5)
                if condition(seen):
                    return seen
            await asyncio.sleep(1)  # Home Assistant is still setting up; ask again


async def test_home_assistant_shows_the_energy_device_and_switching_peak_control_off_round_trips(
    tmp_path, private_mqtt_broker
):
    broker = private_mqtt_broker
    settings = HomeAssistantDeviceSettings(
        enable=True, mqtt=MqttSettings(host=broker.host, port=broker.port)
    )
    async with (
        world(tmp_path, start=(16, 20), ha_device=settings) as w,
        aiomqtt.Client(broker.host, broker.port) as tester,
    ):
        stop, wake = asyncio.Event(), asyncio.Event()
        device = EnergyDevice(w.runtime, settings, clock=w.clock, stop=stop, wake=wake)
        device_task = asyncio.create_task(device.run())

        async def cycle() -> None:
            w.clock.advance(60)
            w.house.step(w.clock.now())
            report = await w.runtime.reconciler.cycle()
            device.observe(report, health_problems(w.runtime, report))

        for _ in range(5):
            await cycle()
        assert w.site.backup_reserve_percent == 0

        watch = await HomeAssistantWatch.start(tester)
        try:
            async with home_assistant(broker.port) as (config, process):
                await asyncio.wait_for(watch.born.wait(), 300)
                seen = await asyncio.wait_for(
                    watch.states(lambda s: s.get(PEAK_CONTROL) == "on"), 120
                )
                assert seen["sensor.gridmate_energy_tariff_period"] == "peak"
                assert seen["binary_sensor.gridmate_energy_peak_active"] == "on"
                assert float(seen["sensor.gridmate_energy_backup_reserve"]) == 0.0
                assert seen["number.gridmate_energy_peak_reserve"] == "0"  # Home Assistant's text
                assert "button.gridmate_energy_end_today_s_peak_control_now" in seen

                # A user switches peak control off in Home Assistant.
                wake.clear()
                await tester.publish("gridmate-test/peak-control-off", b"", qos=1)
                await asyncio.wait_for(wake.wait(), 60)
                for _ in range(3):  # restore, read back, report
                    await cycle()
                assert (w.site.backup_reserve_percent, w.site.operation_mode) == (
                    30,
                    "autonomous",
                )

                # The switch and the restored reserve are separate state updates.
                def restored(s: dict) -> bool:
                    reserve = s.get("sensor.gridmate_energy_backup_reserve")
                    return s.get(PEAK_CONTROL) == "off" and reserve in ("30", "30.0")

                seen = await asyncio.wait_for(watch.states(restored), 60)
                assert seen["binary_sensor.gridmate_energy_peak_active"] == "off"
                assert float(seen["sensor.gridmate_energy_backup_reserve"]) == 30.0

                process.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(process.wait(), 120) == 0
                registry = json.loads((config / ".storage" / "core.entity_registry").read_text())
                ours = [
                    e
                    for e in registry["data"]["entities"]
                    if e["platform"] == "mqtt" and e["unique_id"].startswith("gridmate_energy_home")
                ]
                assert len(ours) >= 23
                assert {e["entity_id"].split(".")[0] for e in ours} == {
                    "sensor", "binary_sensor", "switch", "button", "number", "event",
                }  # fmt: skip
                assert _problems(config) == []
        finally:
            assert watch.listener is not None
            watch.listener.cancel()
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(device_task, 15)


async def test_home_assistant_shows_teslamate_values_as_teslamate_sent_them(
    private_mqtt_broker,
):
    """TeslaMate's kilometres and km/h, stored in miles, come back in a metric Home
    Assistant as TeslaMate's numbers; the car's controls (switches and numbers with
    their ranges), the sunroof, software update and route entities and a support URL are
    accepted and show the car's values; no warnings."""
    from gridmate.homeassistant.link import Message
    from gridmate.sim.fleet_telemetry import sample_vin
    from gridmate.vehicles.catalogue import invalid_policies
    from gridmate.vehicles.homeassistant.controls import CHARGE_LIMIT as CHARGE_LIMIT_CONTROL
    from gridmate.vehicles.homeassistant.controls import (
        VehicleControls,
        command_topic,
        enabled_controls,
    )
    from gridmate.vehicles.homeassistant.discovery import Topics
    from gridmate.vehicles.homeassistant.publisher import Publisher
    from gridmate.vehicles.sources.teslamate import TeslaMateCarView, interpret
    from gridmate.vehicles.state import StateStore

    broker = private_mqtt_broker
    vin = sample_vin(5)
    store = StateStore(invalid_policies())
    view = TeslaMateCarView(1)
    now = datetime.now(UTC).timestamp()
    for key, payload in (
        ("state", "driving"), ("shift_state", "D"), ("speed", "88"), ("odometer", "20117.04"),
        ("battery_level", "80"), ("charging_state", "Stopped"), ("geofence", "Home"),
        ("inside_temp", "21.5"), ("sun_roof_percent_open", "80"), ("sun_roof_state", "vent"),
        ("sun_roof_installed", "true"), ("download_perc", "37"), ("install_perc", "0"),
        ("windows_open", "true"), ("charge_limit_soc", "90"), ("charge_current_request", "16"),
        ("charge_current_request_max", "32"), ("is_climate_on", "false"),
        ("active_route", '{"destination":"Work","energy_at_arrival":71,"miles_to_arrival":6.4,'
         '"minutes_to_arrival":23.5,"traffic_minutes_delay":4.0,'
         '"location":{"latitude":33.45,"longitude":-112.07},"error":null}'),
    ):  # fmt: skip
        for name, value in interpret(view, key, payload):
            store.update(vin, name, value, now, "teslamate")
    topics = Topics()
    publisher = Publisher(
        store,
        topics,
        {vin: "Blue"},
        now=lambda: now,
        controls=enabled_controls(climate=True),
        support_url="https://git.example/gridmate/issues",
    )
    publisher.mark_vehicles([vin])
    messages: list[Message] = publisher.take().messages
    async with aiomqtt.Client(broker.host, broker.port) as tester:
        await tester.publish(topics.status, b"online", qos=1, retain=True)
        for message in messages:
            await tester.publish(message.topic, message.payload, qos=1, retain=message.retain)
        charge_limit_commands = command_topic(topics.base, vin, "charge_limit")
        watch = await HomeAssistantWatch.start(tester, also=(charge_limit_commands,))
        try:
            async with home_assistant(broker.port, prefix="blue", units="metric") as (
                config,
                process,
            ):
                await asyncio.wait_for(watch.born.wait(), 300)
                seen = await asyncio.wait_for(
                    watch.states(lambda s: s.get("sensor.blue_odometer") not in (None, "unknown")),
                    120,
                )
                assert seen["sensor.blue_odometer"] == "20117.04"  # TeslaMate's number
                assert float(seen["sensor.blue_speed"]) == 88.0
                assert seen["sensor.blue_geofence"] == "Home"
                assert seen["switch.blue_charging_control"] == "off"
                assert seen["number.blue_charge_limit_control"] == "90"
                assert seen["number.blue_charging_current_control"] == "16"
                assert seen["switch.blue_climate_control"] == "off"
                # What Home Assistant sends when the slider is set is what gridmate takes.
                await tester.publish("gridmate-test/charge-limit", b"", qos=1)
                payload = await asyncio.wait_for(watch.received[charge_limit_commands].get(), 60)
                state = store.get(vin)
                assert state is not None
                assert VehicleControls.validate(CHARGE_LIMIT_CONTROL, state, payload) == 85.0
                assert "sensor.blue_tyre_pressure_front_left" not in seen  # never delivered
                assert seen["sensor.blue_sunroof"] == "80"
                assert seen["sensor.blue_sunroof_state"] == "vent"
                assert seen["sensor.blue_software_update_download"] == "37"
                assert seen["binary_sensor.blue_windows"] == "on"
                process.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(process.wait(), 120) == 0
                registry = json.loads((config / ".storage" / "core.entity_registry").read_text())
                disabled = {
                    e["unique_id"].rsplit(f"{vin}_", 1)[1]
                    for e in registry["data"]["entities"]
                    if e["platform"] == "mqtt" and e["disabled_by"] == "integration"
                }
                # Disabled by default, so Home Assistant keeps them in the registry only.
                assert {
                    "destination_name", "energy_at_arrival", "traffic_delay_minutes",
                    "minutes_to_arrival", "miles_to_arrival", "sunroof_installed",
                } <= disabled  # fmt: skip
                assert _problems(config) == []
        finally:
            assert watch.listener is not None
            watch.listener.cancel()


async def test_home_assistant_fires_the_reports_event_and_keeps_the_entity_available(
    tmp_path, private_mqtt_broker
):
    """A command that runs for seconds: the event reaches an automation on the first
    run (announced just before; without ha_device.announce_wait_seconds Home Assistant
    has not subscribed yet and the event is lost), and the entity stays available
    after the run."""
    from test_report import DAY, NOW, FixedClock

    from gridmate.report.daily import run_daily
    from gridmate.report.sample_day import write_synthetic_day
    from gridmate.report.settings import ReportSettings

    broker = private_mqtt_broker
    write_synthetic_day(tmp_path, DAY)
    settings = ReportSettings(
        state_directory=tmp_path,
        time_zone="America/Phoenix",
        ha_device={"enable": True, "mqtt": {"host": broker.host, "port": broker.port}},
    )
    entity = "event.gridmate_report_notifications"
    async with aiomqtt.Client(broker.host, broker.port) as tester:
        watch = await HomeAssistantWatch.start(tester, also=("gridmate-test/events",))

        async def fired() -> dict:
            while True:
                seen = json.loads(await watch.received["gridmate-test/events"].get() or b"{}")
                if seen.get("entity_id") == entity and seen["state"] not in (
                    "unknown",
                    "unavailable",
                ):
                    return seen

        try:
            async with home_assistant(broker.port, prefix="gridmate_report") as (config, process):
                await asyncio.wait_for(watch.born.wait(), 300)
                assert await run_daily(settings, "2026-07-14", clock=FixedClock(NOW)) == 0
                first = await asyncio.wait_for(fired(), 60)
                assert first["attributes"]["event_type"] == "info"
                assert first["attributes"]["kind"] == "daily_report"
                assert first["attributes"]["title"].startswith("Daily report Tue 14 Jul")
                assert first["attributes"]["event_types"] == ["info", "warning", "critical"]

                # The report has ended: the entity keeps its last event, available.
                seen = await asyncio.wait_for(watch.states(lambda s: entity in s), 30)
                assert seen[entity] == first["state"]

                # A second run fires again without announcing anew.
                assert await run_daily(settings, "2026-07-14", clock=FixedClock(NOW)) == 0
                second = await asyncio.wait_for(fired(), 60)
                assert second["state"] != first["state"]

                process.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(process.wait(), 120) == 0
                registry = json.loads((config / ".storage" / "core.entity_registry").read_text())
                [registered] = [e for e in registry["data"]["entities"] if e["entity_id"] == entity]
                assert registered["unique_id"] == "gridmate_report_notifications"
                assert _problems(config) == []
        finally:
            assert watch.listener is not None
            watch.listener.cancel()
