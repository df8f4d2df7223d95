"""The energy manager's run loop: build the adapters, cycle, report health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gridmate.energy.adapters.gateway import GatewayClient
from gridmate.energy.adapters.powerwall import Powerwall
from gridmate.energy.adapters.thermostat import (
    HomeAssistantThermostat,
    HoneywellAuth,
    HoneywellThermostat,
    Thermostat,
)
from gridmate.energy.adapters.vehicles import FleetVehicles, MqttVehicles, VehicleSource
from gridmate.energy.adapters.weather import WeatherClient
from gridmate.energy.failover.lease import WriteGate, WriterLease
from gridmate.energy.journal import DayJournal
from gridmate.energy.notices import AlertMonitor
from gridmate.energy.planner import PlannerConfig
from gridmate.energy.reconciler import CycleReport, Reconciler
from gridmate.energy.settings import EnergySettings
from gridmate.energy.state import StateStore, write_status
from gridmate.notify import Event, EventKind, Notifier
from gridmate.notify.failures import resolve_failure
from gridmate.runtime.clock import Clock, sleep_or_wake
from gridmate.runtime.daemon import Daemon
from gridmate.runtime.logs import get_logger
from gridmate.tesla.fleet_api import FleetApi
from gridmate.tesla.settings import build_fleet_api, build_token_provider
from gridmate.tesla.tokens import TokenProvider

if TYPE_CHECKING:
    from gridmate.energy.homeassistant import EnergyDevice

log = get_logger("energy.service")

_PHASES = ("idle", "precool", "peak", "restore")


def planner_config(settings: EnergySettings) -> PlannerConfig:
    return PlannerConfig(
        reserve=settings.reserve,
        policy=settings.policy,
        controlled_periods=frozenset(settings.tariff.controlled_periods),
        thermostat_ids=tuple(t.id for t in settings.thermostats),
        ev_enabled=settings.ev.enable,
        ev_vins=tuple(settings.ev.vins),
    )


@dataclass
class EnergyRuntime:
    settings: EnergySettings
    reconciler: Reconciler
    http: httpx.AsyncClient
    fleet: FleetApi | None
    gateway: GatewayClient | None
    notifier: Notifier | None
    background: list[asyncio.Task[Any]] = field(default_factory=list)
    own_fleet: bool = True
    alerts: AlertMonitor | None = None
    tokens: TokenProvider | None = None
    lease: WriterLease | None = None
    split_brain: tuple[str, ...] = ()
    """The other active nodes last reported (empty: none)."""
    _split_announced: bool = False

    @property
    def site_key(self) -> str:
        """What notifications about the energy site are keyed by."""
        powerwall = self.reconciler.powerwall
        if powerwall is not None and powerwall.site_id is not None:
            return f"site {powerwall.site_id}"
        return "powerwall"

    def tokens_healthy(self) -> bool:
        """Tesla tokens work: the provider reports nothing and Tesla answered lately."""
        powerwall = self.reconciler.powerwall
        health = getattr(self.tokens, "health", None)
        return (
            self.tokens is not None
            and (health is None or health() is None)
            and powerwall is not None
            and powerwall.health.last_ok is not None
            and powerwall.health.last_error is None
        )

    def honeywell_healthy(self) -> bool:
        """Every Honeywell thermostat answered lately and none reports a problem."""
        healths = [d.health for d in self.reconciler.thermostats.values()
                   if d.health.name.startswith("honeywell")]  # fmt: skip
        return bool(healths) and all(h.last_ok is not None and h.problem() is None for h in healths)

    async def after_cycle(self, report: CycleReport) -> None:
        """Tell people what the cycle did and which conditions opened or cleared."""
        site_key = self.site_key
        if self.notifier is not None:
            for kind, facts in report.events:
                event = _event(kind, facts, site_key)
                if event is not None:
                    await self.notifier.send(event)
        await self._watch_split_brain(report)
        if self.alerts is not None:
            await self.alerts.observe(
                self.reconciler, report, site_key, tokens_healthy=self.tokens_healthy(),
                honeywell_healthy=self.honeywell_healthy(),
            )  # fmt: skip

    async def _watch_split_brain(self, report: CycleReport) -> None:
        """Both nodes active: journal it and tell people once; and when it is over.

        Both nodes journal it; the one holding the lease (the one in control) sends
        the message, so the pair sends one even when both see it in the same instant.
        """
        if self.lease is None:
            return
        verdict = self.lease.verdict()
        others = verdict.others
        if others == self.split_brain:
            return
        announced = bool(self.split_brain) and self._split_announced
        self.split_brain = others
        node = self.lease.own.node
        journal = self.reconciler.journal
        if others:
            journal.append("failover", at=report.at, node=node, state="SPLIT_BRAIN",
                           others=list(others), holds_lease=verdict.holds)  # fmt: skip
            log.error("split brain: another node is active too", others=",".join(others),
                      holds_lease=verdict.holds)  # fmt: skip
            if self.notifier is not None and verdict.holds:
                self._split_announced = True
                did = (
                    f"{node} holds the lease on the shared MQTT broker and goes on controlling "
                    "the site; the other node writes nothing while this lasts."
                )
                await self.notifier.send(
                    Event(
                        EventKind.failover_split_brain,
                        f"Energy manager active on {node} and {', '.join(others)} at once",
                        f"Both nodes of the energy manager's failover pair are active "
                        f"({node} and {', '.join(others)}): keepalived on each believes the "
                        "other is gone, usually because the link between them is cut or "
                        "VRRP traffic is dropped.",
                        did,
                        "Check the link between the two hosts and their firewalls "
                        "('journalctl -u keepalived' on both).",
                        key="energy failover",
                    )
                )
        else:
            journal.append("failover", at=report.at, node=node, state="SPLIT_BRAIN_OVER")
            log.info("split brain over")
            if self.notifier is not None and announced:
                self._split_announced = False
                await self.notifier.resolve(EventKind.failover_split_brain, "energy failover")

    async def close(self) -> None:
        if self.lease is not None:
            await self.lease.close()
        for task in self.background:
            task.cancel()
        for task in self.background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.notifier is not None:
            await self.notifier.close()
        if self.gateway is not None:
            await self.gateway.aclose()
        if self.fleet is not None and self.own_fleet:
            await self.fleet.aclose()
        await self.http.aclose()


async def build_runtime(
    settings: EnergySettings,
    *,
    clock: Clock,
    registry: CollectorRegistry | None = None,
    stop: asyncio.Event | None = None,
    fleet: FleetApi | None = None,
    with_notifier: bool = True,
) -> EnergyRuntime:
    """Every adapter as configured. ``fleet`` replaces the configured Fleet API client."""
    schedule = settings.tariff.build()
    notifier = None
    if with_notifier:
        notifier = Notifier(
            settings.notify, settings.state_directory, clock=clock, registry=registry,
            source="energy",
        )  # fmt: skip
        await notifier.start()
    alerts = AlertMonitor(settings.alerts, notifier, schedule.tz)
    http = httpx.AsyncClient(timeout=20.0)
    background: list[asyncio.Task[Any]] = []
    own_fleet = fleet is None
    tokens: TokenProvider | None = None
    if fleet is None:
        tokens = build_token_provider(
            settings.tesla, settings.state_directory, clock=clock, registry=registry,
            on_event=alerts.token_event,
        )  # fmt: skip
        if tokens is not None:
            fleet = build_fleet_api(
                settings.tesla, tokens, clock=clock, registry=registry,
                state_directory=settings.energy_directory,
            )  # fmt: skip
            upkeep = getattr(tokens, "run", None)
            if upkeep is not None and stop is not None:
                background.append(asyncio.create_task(upkeep(stop), name="energy.tokens"))
    gateway = (
        GatewayClient(settings.powerwall.gateway, clock=clock)
        if settings.powerwall.gateway is not None
        else None
    )
    powerwall = None
    if fleet is not None:
        powerwall = Powerwall(
            fleet,
            clock=clock,
            site_id=settings.powerwall.site_id,
            gateway=gateway,
            cloud_read_seconds=settings.powerwall.cloud_read_seconds,
            capacity_kwh=settings.battery_capacity_kwh,
            max_power_kw=settings.battery_power_kw,
        )
    auth = HoneywellAuth(
        settings.honeywell,
        settings.energy_directory / "honeywell-token.json",
        http=http,
        clock=clock,
        on_event=alerts.token_event,
    )
    thermostats: dict[str, Thermostat] = {}
    for config in settings.thermostats:
        if config.kind == "honeywell":
            thermostats[config.id] = HoneywellThermostat(
                config, settings.honeywell, auth, http=http, clock=clock, tz=schedule.tz
            )
        else:
            thermostats[config.id] = HomeAssistantThermostat(
                config, settings.home_assistant, http=http, clock=clock
            )
    weather = WeatherClient(settings.weather, schedule.tz, http=http, clock=clock)
    vehicles: VehicleSource | None = None
    if settings.ev.enable and fleet is not None:
        vehicles = FleetVehicles(fleet, settings.ev, clock=clock)
        if settings.ev.state_source == "mqtt":
            hub = MqttVehicles(settings.ev, vehicles, clock=clock)
            if stop is not None:
                background.append(asyncio.create_task(hub.run(stop), name="energy.vehicles"))
            vehicles = hub
    lease: WriterLease | None = None
    gate: WriteGate | None = None
    if settings.failover.enable:
        if settings.notify.mqtt is not None:
            lease = WriterLease(
                settings.notify.mqtt,
                settings.notify.mqtt_topic,
                settings.notify.node_name or socket.gethostname(),
                ttl=settings.failover.lease_seconds,
            )
            await lease.start()
        else:
            log.warning("failover without notify.mqtt: a split brain is not detected")
        gate = WriteGate(settings.failover.role_file, lease)
    reconciler = Reconciler(
        schedule=schedule,
        config=planner_config(settings),
        clock=clock,
        store=StateStore(settings.state_directory),
        journal=DayJournal(settings.state_directory, schedule.tz, clock=clock),
        powerwall=powerwall,
        thermostats=thermostats,
        vehicles=vehicles,
        weather=weather if weather.configured else None,
        writes_per_day=settings.reserve.writes_per_day,
        dry_run=settings.dry_run,
        gate=gate.refusal if gate is not None else None,
        carried=(lambda: lease.carried) if lease is not None else None,
        keep_baseline=lease.keep_baseline if lease is not None else None,
    )
    return EnergyRuntime(
        settings, reconciler, http, fleet, gateway, notifier, background, own_fleet=own_fleet,
        alerts=alerts, tokens=tokens, lease=lease,
    )  # fmt: skip


# ---------------------------------------------------------------- notifications


def _event(kind: str, facts: dict[str, Any], site: str) -> Event | None:
    soc = facts.get("soc")
    soc_text = f"{soc:.0f} %" if isinstance(soc, int | float) else "unknown"
    if kind == "peak_started":
        return Event(EventKind.peak_started, "Peak period started",
                     f"The peak period started with the battery at {soc_text}.",
                     "Lowered the backup reserve so the house runs from the battery.",
                     key=site)  # fmt: skip
    if kind == "peak_ended":
        return Event(EventKind.peak_ended, "Peak period ended",
                     f"The peak period ended with the battery at {soc_text}.",
                     "Restoring the settings from before the peak.", key=site)  # fmt: skip
    if kind == "precool_decided" and facts.get("decided"):
        return Event(EventKind.precool_decided, "Precooling before the peak",
                     f"The forecast high is {facts.get('forecast_high_f')} °F "
                     f"({facts.get('source')}), at or above {facts.get('threshold_f')} °F.",
                     "Cooling the house a few degrees below its setpoint until the peak starts.",
                     key=site)  # fmt: skip
    if kind == "reserve_restore_verified":
        return Event(EventKind.reserve_restore_verified, "Backup reserve restored",
                     f"After the peak the Powerwall reads back reserve {facts.get('reserve')} % "
                     f"in mode {facts.get('mode')}.", "Verified the restore by reading it back.",
                     key=site,
                     # Both nodes of a failover pair may read the same restore back: one
                     # message per peak (the notification ledger is mirrored between them).
                     occurrence=f"restore {_block_start(facts)}")  # fmt: skip
    if kind == "reserve_restore_failed":
        return Event(EventKind.reserve_restore_failed, "Backup reserve not restored",
                     f"Restoring the Powerwall after the peak failed: {facts.get('reason')}.",
                     "Will try again every cycle while writes are left today.",
                     "Check the reserve in the Tesla app.", key=site)  # fmt: skip
    if kind == "thermostat_override_detected":
        tid = facts.get("thermostat")
        return Event(EventKind.thermostat_override_detected, f"Thermostat {tid} changed by hand",
                     f"Someone changed thermostat {tid} during the peak.",
                     "Leaving it alone until the peak is over, and not restoring it.",
                     key=f"{tid} {_block_day(facts)}")  # fmt: skip
    if kind == "powerwall_override_detected":
        changes = facts.get("changes") or {}
        said = "; ".join(
            f"{_SETTING_NAMES.get(name, name)} {_show(c.get('written'))} → {_show(c.get('now'))}"
            for name, c in changes.items()
        )
        return Event(EventKind.powerwall_override_detected, "Powerwall changed by hand",
                     f"Someone changed the Powerwall during the peak (gridmate's setting → now: "
                     f"{said}).",
                     "Leaving the Powerwall as it is for the rest of this peak and not "
                     "restoring it afterwards; the next peak is controlled as usual.",
                     "Nothing, if the change was meant. To hand the peak back to gridmate, set "
                     "the reserve back to what gridmate set.",
                     key=f"{site} {_block_day(facts)}")  # fmt: skip
    return None


_SETTING_NAMES = {"backup_reserve_percent": "backup reserve", "default_real_mode": "mode"}


def _show(value: Any) -> str:
    return f"{value} %" if isinstance(value, int) else str(value)


def _block_start(facts: dict[str, Any]) -> str:
    block = facts.get("block")
    return block[0].isoformat() if block else "-"


def _block_day(facts: dict[str, Any]) -> str:
    # Overrides are reported per peak: the notifier keeps a condition open by key, so
    # a key without the day would silence the next day's override.
    block = facts.get("block")
    return block[0].date().isoformat() if block else "-"


# ---------------------------------------------------------------- metrics


class EnergyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.soc = Gauge("gridmate_energy_battery_soc_percent", "Powerwall charge (app scale).",
                         registry=registry)  # fmt: skip
        self.reserve = Gauge("gridmate_energy_backup_reserve_percent", "Backup reserve read back.",
                             registry=registry)  # fmt: skip
        self.grid = Gauge("gridmate_energy_grid_kw", "Grid power (+ import).", registry=registry)
        self.phase = Gauge("gridmate_energy_phase", "1 for the current phase.", ["phase"],
                           registry=registry)  # fmt: skip
        self.ladder = Gauge("gridmate_energy_ladder_level", "Battery ladder steps taken.",
                            registry=registry)  # fmt: skip
        self.writes = Gauge("gridmate_energy_powerwall_writes_today", "Powerwall writes today.",
                            registry=registry)  # fmt: skip
        self.actions = Counter("gridmate_energy_actions", "Device writes by kind, result.",
                               ["device", "result"], registry=registry)  # fmt: skip
        self.cycle_seconds = Histogram("gridmate_energy_cycle_seconds", "Control cycle duration.",
                                       registry=registry)  # fmt: skip
        self.cycle_errors = Counter("gridmate_energy_cycle_errors", "Cycles that raised.",
                                    registry=registry)  # fmt: skip

    def observe(self, report: CycleReport, writes: int) -> None:
        reading = report.reading
        if reading is not None:
            if reading.soc_percent is not None:
                self.soc.set(reading.soc_percent)
            if reading.reserve_percent is not None:
                self.reserve.set(reading.reserve_percent)
            self.grid.set(reading.grid_kw)
        if report.plan is not None:
            for phase in _PHASES:
                self.phase.labels(phase).set(1.0 if phase == report.plan.phase else 0.0)
            self.ladder.set(report.plan.memory.ladder_level)
        self.writes.set(writes)
        for action in report.actions:
            device = str(action["device"]).split(":")[0]
            self.actions.labels(device, "ok" if action["ok"] else "failed").inc()


# ---------------------------------------------------------------- loop


def status_of(
    runtime: EnergyRuntime, report: CycleReport | None, problems: list[str]
) -> dict[str, Any]:
    reconciler = runtime.reconciler
    status: dict[str, Any] = {
        "updated": reconciler.clock.now().isoformat(),
        "dry_run": runtime.settings.dry_run,
        "problems": problems,
        "powerwall_writes_today": reconciler.state.powerwall_writes,
        "writes_per_day": reconciler.writes_per_day,
        "memory": reconciler.state.memory.to_json(),
        "api_usage": {k: {"used": u, "budget": b} for k, (u, b) in reconciler.api_usage().items()},
    }
    if report is not None and report.plan is not None:
        plan = report.plan
        status.update(
            phase=plan.phase,
            period=plan.period,
            block=[t.isoformat() for t in plan.block] if plan.block else None,
            raise_f=plan.raise_f,
            minutes_left=plan.minutes_left,
        )
    if report is not None and report.reading is not None:
        reading = report.reading
        status["site"] = {
            "soc": reading.soc_percent,
            "reserve": reading.reserve_percent,
            "mode": reading.mode,
            "load_kw": reading.load_kw,
            "grid_kw": reading.grid_kw,
            "thermostats": {
                k: {
                    "mode": t.mode,
                    "cool_setpoint_f": t.cool_setpoint_f,
                    "hold": t.hold,
                    "indoor_f": t.indoor_f,
                }
                for k, t in reading.thermostats.items()
            },
        }
    if report is not None and report.forecast is not None:
        status["forecast"] = {"high_f": report.forecast.high_f, "source": report.forecast.source}
    return status


def health_problems(runtime: EnergyRuntime, report: CycleReport | None) -> list[str]:
    problems: list[str] = []
    reconciler = runtime.reconciler
    if reconciler.powerwall is None:
        problems.append("no Tesla access (set tesla.token_source)")
    else:
        reason = reconciler.powerwall.health.problem()
        if reason:
            problems.append(f"tesla: {reason}")
    if runtime.gateway is not None:
        reason = runtime.gateway.health.problem()
        if reason:
            problems.append(f"powerwall gateway: {reason} (reading from Tesla's cloud instead)")
    for tid, device in reconciler.thermostats.items():
        reason = device.health.problem()
        if reason:
            problems.append(f"thermostat {tid}: {reason}")
    if reconciler.weather is not None and reconciler.weather.health.problem():
        problems.append(f"weather: {reconciler.weather.health.problem()}")
    if report is not None:
        problems.extend(p for p in report.problems if p not in problems)
    if reconciler.state.powerwall_writes >= reconciler.writes_per_day:
        problems.append("Powerwall write budget used up for today")
    return problems


async def run_loop(
    runtime: EnergyRuntime,
    *,
    clock: Clock,
    stop: asyncio.Event,
    metrics: EnergyMetrics | None = None,
    on_cycle: Callable[[CycleReport], Awaitable[None] | None] | None = None,
    ready: Callable[[str], None] | None = None,
    wake: asyncio.Event | None = None,
    on_health: Callable[[CycleReport | None, list[str]], None] | None = None,
) -> None:
    """Cycle until ``stop``; ``wake`` starts the next cycle early (a command arrived)."""
    settings = runtime.settings
    reconciler = runtime.reconciler
    powerwall = reconciler.powerwall
    if powerwall is not None:
        try:
            await powerwall.start()
        except Exception as error:  # reported; the loop keeps trying through read()
            log.warning("Powerwall not reachable at start", error=str(error))
    if ready is not None:
        mode = "dry run" if settings.dry_run else "controlling"
        today = reconciler.schedule.local_date(clock.now())
        ready(f"Energy manager {mode}: tariff {settings.tariff.describe(today)}, "
              f"{len(reconciler.thermostats)} thermostat(s)")  # fmt: skip
    if runtime.notifier is not None:
        await resolve_failure(runtime.notifier, "energy")
    if runtime.lease is not None:
        # The first cycle waits for the broker's answer instead of refusing to write.
        verdict = await runtime.lease.wait_decided(settings.failover.lease_seconds / 2)
        log.info("writer lease", holds=verdict.holds, reason=verdict.reason or "-",
                 others=",".join(verdict.others) or "-")  # fmt: skip
    last_health: tuple[bool, tuple[str, ...]] | None = None
    while not stop.is_set():
        started = clock.now()
        report: CycleReport | None = None
        try:
            report = await reconciler.cycle()
        except Exception as error:
            log.error("control cycle failed", error=f"{type(error).__name__}: {error}",
                      exc_info=error)  # fmt: skip
            if metrics is not None:
                metrics.cycle_errors.inc()
        problems = health_problems(runtime, report)
        health = (not problems, tuple(problems))
        if health != last_health:
            reconciler.journal.append("health", ok=not problems, problems=problems)
            last_health = health
        if report is not None:
            if metrics is not None:
                metrics.observe(report, reconciler.state.powerwall_writes)
                metrics.cycle_seconds.observe((clock.now() - started).total_seconds())
            await runtime.after_cycle(report)
            if on_cycle is not None:
                outcome = on_cycle(report)
                if outcome is not None:
                    await outcome
        write_status(settings.runtime_directory, status_of(runtime, report, problems))
        if on_health is not None:
            on_health(report, problems)
        # Cycles start on multiples of cycle_seconds, so minutes line up with the tariff.
        now = clock.now().timestamp()
        wait = settings.cycle_seconds - (now % settings.cycle_seconds)
        if wake is None:
            await sleep_or_wake(clock, wait, stop)
        else:
            await _sleep_or_wake_either(clock, wait, stop, wake)
            wake.clear()


async def _sleep_or_wake_either(
    clock: Clock, seconds: float, stop: asyncio.Event, wake: asyncio.Event
) -> None:
    either = asyncio.Event()
    relays = [asyncio.ensure_future(_relay(event, either)) for event in (stop, wake)]
    try:
        await sleep_or_wake(clock, seconds, either)
    finally:
        for relay in relays:
            relay.cancel()


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def run(settings: EnergySettings, daemon: Daemon) -> None:
    runtime = await build_runtime(
        settings, clock=daemon.clock, registry=daemon.registry, stop=daemon.stop
    )
    last: dict[str, CycleReport | None] = {"report": None}

    def check() -> str | None:
        problems = health_problems(runtime, last["report"])
        return "; ".join(problems) if problems else None

    daemon.add_health_check("energy", check)
    if runtime.notifier is not None:
        daemon.add_health_check("notify", runtime.notifier.health)
    metrics = EnergyMetrics(daemon.registry)

    previous_phase: dict[str, str] = {"phase": ""}

    def on_cycle(report: CycleReport) -> None:
        last["report"] = report
        if report.plan is not None and report.plan.phase != previous_phase["phase"]:
            previous_phase["phase"] = report.plan.phase
            daemon.status(f"Phase {report.plan.phase} ({report.plan.period})")

    device, wake = start_home_assistant_device(runtime, clock=daemon.clock, stop=daemon.stop)
    try:
        await run_loop(
            runtime, clock=daemon.clock, stop=daemon.stop, metrics=metrics, on_cycle=on_cycle,
            ready=daemon.ready, wake=wake, on_health=device.observe if device else None,
        )  # fmt: skip
    finally:
        await runtime.close()


def start_home_assistant_device(
    runtime: EnergyRuntime, *, clock: Clock, stop: asyncio.Event
) -> tuple[EnergyDevice | None, asyncio.Event | None]:
    """The Home Assistant device when ``ha_device.enable``, running as a background task."""
    if not runtime.settings.ha_device.enable:
        return None, None
    from gridmate.energy.homeassistant import EnergyDevice

    wake = asyncio.Event()
    device = EnergyDevice(runtime, runtime.settings.ha_device, clock=clock, stop=stop, wake=wake)
    if runtime.notifier is not None:
        runtime.notifier.add_listener(device.notification)
    runtime.background.append(asyncio.create_task(device.run(), name="energy.homeassistant"))
    return device, wake


def describe_time(when: datetime, tz: Any) -> str:
    return when.astimezone(tz).strftime("%H:%M")
