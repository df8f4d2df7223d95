"""The energy manager as a Home Assistant device, with controls (``ha_device.enable``).

Topics (``<root>`` is ``<base>/energy/<site>``, ``gridmate/energy/home`` by default):

* ``<root>/state`` (retained): one JSON document with every entity's value; each
  entity reads it with ``{{ value_json.<key> }}``.
* ``<root>/<key>/attributes`` (retained): the attributes of the entities that have
  some (precool decision, health problems, today's plan).
* ``<root>/set/<key>``: the command topics Home Assistant publishes to (never retained;
  a retained command is ignored). See :data:`COMMANDS`.
* ``<root>/status`` (retained): availability, ``online`` with the last will ``offline``.
* ``<discovery prefix>/device/<node>_energy_<site>/config`` (retained): device-based
  discovery for the whole device, sent again when Home Assistant comes online.

A command is validated (a refusal is logged with its reason and the state is
published again, so Home Assistant shows the value really in effect), stored in the
energy state (``controls`` in ``state.json``, so it survives restarts and a failover),
wakes the control loop, which applies it in the cycle that follows, and is confirmed
by the state that cycle publishes. A node whose failover role is standby ignores
commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gridmate import __version__
from gridmate.energy.controls import Controls, effective_config, reserve_refusal
from gridmate.energy.journal import read_day
from gridmate.energy.planner import precool_reason
from gridmate.energy.reconciler import CycleReport
from gridmate.energy.settings import HomeAssistantDeviceSettings
from gridmate.energy.tariff.schedule import PERIODS
from gridmate.energy.timeline import day_timeline
from gridmate.homeassistant.commands import (
    CommandRejected,
    CommandSpec,
    button,
    number,
    parse_command,
    switch,
)
from gridmate.homeassistant.discovery import (
    device_config_topic,
    device_document,
    encode,
    homeassistant_status,
)
from gridmate.homeassistant.link import (
    HomeAssistantLink,
    Message,
    MqttUnavailable,
    default_client_id,
)
from gridmate.homeassistant.notifications import (
    EVENT_TYPES,
    MAX_PENDING,
    notification_payload,
)
from gridmate.notify import Event
from gridmate.report.metrics import day_metrics
from gridmate.runtime.clock import Clock
from gridmate.runtime.logs import get_logger

if TYPE_CHECKING:
    from gridmate.energy.service import EnergyRuntime

log = get_logger("energy.homeassistant")

FAILOVER_STATE_FILE = "failover-state"
"""Where ``gridmate energy failover-notify`` keeps this node's last keepalived state."""


@dataclass(frozen=True)
class EnergyTopics:
    base: str = "gridmate"
    discovery_prefix: str = "homeassistant"
    node: str = "gridmate"
    site: str = "home"

    @property
    def root(self) -> str:
        return f"{self.base}/energy/{self.site}"

    @property
    def status(self) -> str:
        return f"{self.root}/status"

    @property
    def homeassistant_status(self) -> str:
        return homeassistant_status(self.discovery_prefix)

    @property
    def state(self) -> str:
        return f"{self.root}/state"

    @property
    def notifications(self) -> str:
        """The event entity's topic (not retained: an event happens once)."""
        return f"{self.root}/notifications"

    def attributes(self, key: str) -> str:
        return f"{self.root}/{key}/attributes"

    def command(self, key: str) -> str:
        return f"{self.root}/set/{key}"

    @property
    def object_id(self) -> str:
        return f"{self.node}_energy_{self.site}"

    @property
    def discovery(self) -> str:
        return device_config_topic(self.discovery_prefix, self.object_id)


# ---------------------------------------------------------------- commands

PRECOOL_THRESHOLD_RANGE = (60.0, 130.0)

COMMANDS: dict[str, CommandSpec] = {
    spec.key: spec
    for spec in (
        switch("peak_control"),
        switch("dry_run"),
        button("skip_precool"),
        button("end_peak"),
        number("peak_reserve", 0, 100, 1, check=reserve_refusal),
        number("precool_threshold", *PRECOOL_THRESHOLD_RANGE, 0.5),
    )
}


def apply_command(
    controls: Controls, key: str, value: bool | float | None, today: date, at: datetime
) -> Controls:
    """The controls after a validated command given at ``at`` (pure)."""
    return replace(_apply(controls, key, value, today), changed_at=at)


def _apply(controls: Controls, key: str, value: bool | float | None, today: date) -> Controls:
    if key == "peak_control":
        return replace(controls, peak_control=bool(value))
    if key == "dry_run":
        return replace(controls, dry_run=bool(value))
    if key == "skip_precool":
        return replace(controls, skip_precool_day=today)
    if key == "end_peak":
        return replace(controls, end_peak_day=today)
    if key == "peak_reserve":
        assert isinstance(value, float)
        return replace(controls, peak_reserve_percent=int(value))
    if key == "precool_threshold":
        assert isinstance(value, float)
        return replace(controls, precool_threshold_f=float(value))
    raise KeyError(key)


# ---------------------------------------------------------------- entities


@dataclass(frozen=True)
class Entity:
    key: str
    platform: str
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    attributes: bool = False
    """Has a JSON attributes topic."""


_PERCENT = {"unit_of_meas": "%", "stat_cla": "measurement", "sug_dsp_prc": 0}
ENTITIES: tuple[Entity, ...] = (
    Entity("period", "sensor", "Tariff period", {"dev_cla": "enum", "ops": list(PERIODS)}),
    Entity("phase", "sensor", "Phase", {"dev_cla": "enum",
                                        "ops": ["idle", "precool", "peak", "restore"]}),
    Entity("next_peak_start", "sensor", "Next peak start", {"dev_cla": "timestamp"}),
    Entity("next_peak_end", "sensor", "Next peak end", {"dev_cla": "timestamp"}),
    Entity("peak_active", "binary_sensor", "Peak active", {"ic": "mdi:transmission-tower"}),
    Entity("battery_level", "sensor", "Powerwall battery", {"dev_cla": "battery", **_PERCENT}),
    Entity("backup_reserve", "sensor", "Backup reserve", {"ic": "mdi:battery-lock", **_PERCENT}),
    Entity("planned_reserve", "sensor", "Planned backup reserve",
           {"ic": "mdi:battery-clock", **_PERCENT}),
    Entity("operation_mode", "sensor", "Operation mode", {"ic": "mdi:home-battery"}),
    Entity("setback_step", "sensor", "Thermostat setback step",
           {"stat_cla": "measurement", "ic": "mdi:thermostat"}),
    Entity("precool_today", "binary_sensor", "Precool today", {"ic": "mdi:snowflake"},
           attributes=True),
    Entity("peak_import", "sensor", "Grid import during today's peaks",
           {"dev_cla": "energy", "unit_of_meas": "kWh", "stat_cla": "total_increasing",
            "sug_dsp_prc": 2}),
    Entity("saving_today", "sensor", "Estimated saving today",
           {"dev_cla": "monetary", "sug_dsp_prc": 2}),
    Entity("powerwall_writes_left", "sensor", "Powerwall writes left today",
           {"ent_cat": "diagnostic", "ic": "mdi:counter"}),
    Entity("vehicle_commands_left", "sensor", "Vehicle commands left today",
           {"ent_cat": "diagnostic", "ic": "mdi:counter"}),
    Entity("problem", "binary_sensor", "Health",
           {"dev_cla": "problem", "ent_cat": "diagnostic"}, attributes=True),
    Entity("failover_role", "sensor", "Failover role",
           {"dev_cla": "enum", "ops": ["active", "standby"], "ent_cat": "diagnostic"}),
    Entity("plan", "sensor", "Today's plan", {"ic": "mdi:calendar-clock"}, attributes=True),
    Entity("notifications", "event", "Notifications",
           {"evt_typ": EVENT_TYPES, "ic": "mdi:bell"}),
    Entity("peak_control", "switch", "Peak control", {"ic": "mdi:home-lightning-bolt"}),
    Entity("dry_run", "switch", "Dry run", {"ent_cat": "config", "ic": "mdi:test-tube"}),
    Entity("skip_precool", "button", "Skip precool today", {"ic": "mdi:snowflake-off"}),
    Entity("end_peak", "button", "End today's peak control now", {"ic": "mdi:stop-circle"}),
    Entity("peak_reserve", "number", "Peak reserve",
           {"min": 0, "max": 100, "step": 1, "mode": "box", "unit_of_meas": "%",
            "ent_cat": "config"}),
    Entity("precool_threshold", "number", "Precool threshold",
           {"min": PRECOOL_THRESHOLD_RANGE[0], "max": PRECOOL_THRESHOLD_RANGE[1], "step": 0.5,
            "mode": "box", "unit_of_meas": "°F", "dev_cla": "temperature", "ent_cat": "config"}),
)  # fmt: skip


def _component(entity: Entity, topics: EnergyTopics, currency: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "p": entity.platform,
        "name": entity.name,
        "uniq_id": f"{topics.object_id}_{entity.key}",
    }
    if entity.platform == "event":
        config["stat_t"] = topics.notifications
    elif entity.platform != "button":
        config["stat_t"] = topics.state
        config["val_tpl"] = f"{{{{ value_json.{entity.key} }}}}"
    if entity.key in COMMANDS:
        config["cmd_t"] = topics.command(entity.key)
    if entity.attributes:
        config["json_attr_t"] = topics.attributes(entity.key)
    config.update(entity.options)
    if entity.key == "saving_today":
        config["unit_of_meas"] = currency
    return config


def discovery_document(
    topics: EnergyTopics, settings: HomeAssistantDeviceSettings, *, failover: bool
) -> dict[str, Any]:
    device = {
        "ids": [topics.object_id],
        "name": settings.device_name,
        "mf": "gridmate",
        "mdl": "Energy manager",
        "sw": __version__,
    }
    if settings.configuration_url:
        device["cu"] = settings.configuration_url
    components = {
        f"energy_{topics.site}_{entity.key}": _component(entity, topics, settings.currency)
        for entity in ENTITIES
        if failover or entity.key != "failover_role"
    }
    return device_document(
        device, components, availability=topics.status, support_url=settings.support_url
    )


# ---------------------------------------------------------------- state


def _on(value: bool | None) -> str | None:
    return None if value is None else ("ON" if value else "OFF")


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


@dataclass
class Snapshot:
    """What the state and attribute documents are made of (gathered once per publish)."""

    now: datetime
    report: CycleReport | None
    problems: list[str]
    role: str | None
    peak_import_kwh: float | None = None
    saving: float | None = None
    plan_lines: list[str] = field(default_factory=list)


def documents(runtime: EnergyRuntime, snapshot: Snapshot) -> dict[str, dict[str, Any]]:
    """The state document (key ``state``) and each entity's attributes, by key."""
    reconciler = runtime.reconciler
    schedule = reconciler.schedule
    state = reconciler.state
    controls = state.controls
    now = snapshot.now
    today = schedule.local_date(now)
    config = effective_config(reconciler.config, controls, today)
    report = snapshot.report
    result = report.plan if report is not None else None
    reading = report.reading if report is not None else None
    block = schedule.next_block(now, config.controlled_periods)
    memory = state.memory
    forecast = report.forecast if report is not None else None
    high = forecast.high_f if forecast is not None else None

    planned: int | None = None
    if result is not None and result.powerwall is not None:
        planned = result.powerwall.reserve_percent
    elif controls.peak_control:
        planned = config.reserve.peak_reserve_percent
    vehicle_left = None
    usage = reconciler.api_usage()
    if "tesla_vehicle" in usage:
        used, budget = usage["tesla_vehicle"]
        vehicle_left = None if budget is None else max(0, budget - used)
    plan_state = next(
        (line.strip() for line in snapshot.plan_lines[snapshot.plan_lines.index("Actions:") + 1 :]
         if line.strip()),
        None,
    ) if "Actions:" in snapshot.plan_lines else None  # fmt: skip

    document: dict[str, Any] = {
        "period": schedule.segment_at(now).period,
        "phase": result.phase if result is not None else None,
        "next_peak_start": _time(block[0]) if block else None,
        "next_peak_end": _time(block[1]) if block else None,
        "peak_active": _on(result.phase == "peak") if result is not None else None,
        "battery_level": _finite(reading.soc_percent) if reading else None,
        "backup_reserve": reading.reserve_percent if reading else None,
        "planned_reserve": planned,
        "operation_mode": reading.mode if reading else None,
        "setback_step": memory.ladder_level,
        "precool_today": _on(bool(memory.precool)),
        "peak_import": snapshot.peak_import_kwh,
        "saving_today": snapshot.saving,
        "powerwall_writes_left": max(0, reconciler.writes_per_day - state.powerwall_writes),
        "vehicle_commands_left": vehicle_left,
        "problem": _on(bool(snapshot.problems)),
        "failover_role": snapshot.role,
        "plan": plan_state[:255] if plan_state else None,
        "peak_control": _on(controls.peak_control),
        "dry_run": _on(reconciler.dry_run),
        "peak_reserve": config.reserve.peak_reserve_percent,
        "precool_threshold": config.policy.precool_threshold_f,
        # What the other node of a failover pair takes over (see adopt_controls).
        "controls": controls.to_json(),
    }
    phase = result.phase if result is not None else "idle"
    precool: dict[str, Any] = {
        "decided": memory.precool,
        "reason": precool_reason(
            phase, config.policy.precool, high, config.policy.precool_threshold_f
        ),
        "forecast_high_f": high,
        "threshold_f": config.policy.precool_threshold_f,
        "skipped_today": controls.skip_precool_day == today,
    }
    if controls.skip_precool_day == today:
        precool["reason"] = "skipped today from Home Assistant"
    return {
        "state": document,
        "precool_today": precool,
        "problem": {"problems": list(snapshot.problems)},
        "plan": {"timeline": snapshot.plan_lines, "peak_control_ended_today":
                 controls.end_peak_day == today},
    }  # fmt: skip


def failover_role(energy_directory: Path) -> str | None:
    """``active`` or ``standby`` from keepalived's last transition; None without failover."""
    try:
        text = (energy_directory / FAILOVER_STATE_FILE).read_text().strip()
    except OSError:
        return None
    return "active" if text == "MASTER" else "standby"


# ---------------------------------------------------------------- the device


class EnergyDevice:
    """Publishes the energy manager to Home Assistant and takes its commands."""

    def __init__(
        self,
        runtime: EnergyRuntime,
        settings: HomeAssistantDeviceSettings,
        *,
        clock: Clock,
        stop: asyncio.Event,
        wake: asyncio.Event,
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.clock = clock
        self.wake = wake
        self.topics = EnergyTopics(
            settings.base_topic, settings.discovery_prefix, settings.node_name, settings.site
        )
        self._by_topic = {self.topics.command(key): key for key in COMMANDS}
        self.link = HomeAssistantLink(
            settings.mqtt,
            self.topics,
            stop=stop,
            client_id=default_client_id(settings.node_name, f"energy-{settings.site}"),
            on_homeassistant_online=self._announce_again,
            on_reconnected=self._announce_again,
            command_topics=list(self._by_topic),
            on_command=self.command,
        )
        self.stop = stop
        self._changed = asyncio.Event()
        self._announce = True
        self._announced_failover: bool | None = None
        self._report: CycleReport | None = None
        self._problems: list[str] = []
        self.rejected = 0
        self.accepted = 0
        self._events: list[Message] = []

    def _announce_again(self) -> None:
        self._announce = True
        self._changed.set()

    def observe(self, report: CycleReport | None, problems: list[str]) -> None:
        """A cycle ended: publish what it did."""
        self._report = report
        self._problems = list(problems)
        self._changed.set()

    def notification(self, event: Event) -> None:
        """The notifier reported ``event``: fire the Notifications event entity."""
        payload = notification_payload(event)
        self._events.append(Message(self.topics.notifications, encode(payload), retain=False))
        del self._events[:-MAX_PENDING]
        self._changed.set()

    def command(self, topic: str, payload: bytes) -> None:
        key = self._by_topic.get(topic)
        if key is None:
            return
        reconciler = self.runtime.reconciler
        role = failover_role(self.runtime.settings.energy_directory)
        try:
            if role == "standby":
                raise CommandRejected(f"{key}: this node is the failover standby")
            value = parse_command(COMMANDS[key], payload)
        except CommandRejected as error:
            self.rejected += 1
            log.warning("Home Assistant command refused", reason=str(error))
            self._changed.set()  # the state again, so Home Assistant snaps back
            return
        now = self.clock.now()
        today = reconciler.schedule.local_date(now)
        reconciler.state.controls = apply_command(reconciler.state.controls, key, value, today, now)
        reconciler.store.save(reconciler.state)
        self.accepted += 1
        log.info("Home Assistant command accepted", command=key, value=value)
        reconciler.journal.append(
            "decision", what="command", detail={"command": key, "value": value}
        )
        self.wake.set()  # applied by the next cycle, which publishes the state

    def _snapshot(self) -> Snapshot:
        runtime = self.runtime
        now = self.clock.now()
        schedule = runtime.reconciler.schedule
        today = schedule.local_date(now)
        snapshot = Snapshot(
            now, self._report, self._problems, failover_role(runtime.settings.energy_directory)
        )
        try:
            metrics = day_metrics(
                read_day(runtime.settings.state_directory, today), today, schedule.tz,
                generated_at=now, recovery_target_percent=0.0,
                currency=self.settings.currency,
            )  # fmt: skip
            snapshot.peak_import_kwh = metrics["peak"]["grid_import_kwh"]
            priced = any(s.price_per_kwh is not None for s in schedule.day_plan(today).segments)
            snapshot.saving = metrics["money"]["saved"] if priced else None
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("today's figures not computed", error=str(error))
        forecast = self._report.forecast if self._report is not None else None
        settings = runtime.settings
        controls = runtime.reconciler.state.controls
        effective = settings.model_copy(
            update={
                "reserve": effective_config(runtime.reconciler.config, controls, today).reserve,
                "policy": effective_config(runtime.reconciler.config, controls, today).policy,
                "dry_run": runtime.reconciler.dry_run,
            }
        )
        snapshot.plan_lines = day_timeline(
            effective, today, forecast.high_f if forecast is not None else None
        )
        return snapshot

    def messages(self) -> list[Message]:
        snapshot = self._snapshot()
        failover = snapshot.role is not None
        out: list[Message] = []
        if self._announce or self._announced_failover != failover:
            document = discovery_document(self.topics, self.settings, failover=failover)
            out.append(Message(self.topics.discovery, encode(document)))
            self._announced_failover = failover
        docs = documents(self.runtime, snapshot)
        for key, attributes in docs.items():
            if key != "state":
                out.append(Message(self.topics.attributes(key), encode(attributes)))
        out.append(Message(self.topics.state, encode(docs["state"])))
        out.extend(self._events)
        self._events = []
        return out

    async def adopt_controls(self) -> None:
        """Take over newer controls from the retained state (set on the other node).

        The two nodes of a failover pair share no disk, but they share the broker:
        the retained state document carries the controls with the time a person
        last changed them.
        """
        marker = f"{self.topics.root}/_sync-{uuid.uuid4().hex[:12]}"
        try:
            retained = await self.link.retained(f"{self.topics.root}/+", marker, wait=10.0)
        except MqttUnavailable as error:
            log.warning("retained Home Assistant state not read", error=str(error))
            return
        payload = retained.get(self.topics.state)
        if not payload:
            return
        try:
            remote = Controls.from_json(json.loads(payload).get("controls") or {})
        except (ValueError, TypeError, AttributeError) as error:
            log.warning("retained controls unreadable; keeping this node's", error=str(error))
            return
        reconciler = self.runtime.reconciler
        if remote.newer_than(reconciler.state.controls):
            reconciler.state.controls = remote
            reconciler.store.save(reconciler.state)
            log.info("controls taken over from the broker", controls=json.dumps(remote.to_json()))
            self.wake.set()

    async def run(self) -> None:
        link = asyncio.create_task(self.link.run(), name="energy.homeassistant.link")
        try:
            await self._wait(self.link.connected)
            if not self.stop.is_set():
                await self.adopt_controls()
            while not self.stop.is_set():
                await self._wait(self._changed)
                if self.stop.is_set():
                    break
                await self._wait(self.link.connected)
                if self.stop.is_set():
                    break
                self._changed.clear()
                if failover_role(self.runtime.settings.energy_directory) == "standby":
                    continue  # the active node publishes
                announcing = self._announce
                self._announce = False
                batch = self.messages()
                try:
                    await self.link.publish_many(batch)
                except MqttUnavailable as error:
                    log.warning("Home Assistant state not published", error=str(error))
                    self._announce = self._announce or announcing
                    self._events[:0] = [m for m in batch if not m.retain]
                    self._changed.set()
        finally:
            # The link publishes "offline" once stop is set; give it a moment.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(link, 10)

    async def _wait(self, event: asyncio.Event) -> None:
        waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(self.stop.wait())}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
