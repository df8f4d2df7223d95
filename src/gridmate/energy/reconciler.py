"""One control cycle: read the devices, plan, converge them, record what happened.

The reconciler is level-triggered. Every cycle it computes the whole desired
state from scratch (:func:`gridmate.energy.planner.plan`) and writes only what
differs from what it read, so a missed minute, a failed write or a restart is
repaired by the next cycle instead of being lost with an edge. Every write is
read back; what counts as done is what the device reports afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from gridmate.energy.adapters.common import AdapterError, RateLimitedError
from gridmate.energy.adapters.powerwall import Powerwall, PowerwallReading
from gridmate.energy.adapters.thermostat import Thermostat
from gridmate.energy.adapters.vehicles import VehicleSource
from gridmate.energy.adapters.weather import WeatherClient
from gridmate.energy.controls import effective_config, effective_dry_run
from gridmate.energy.journal import DayJournal
from gridmate.energy.planner import (
    SETPOINT_TOLERANCE_F,
    Baseline,
    DesiredPowerwall,
    DesiredThermostat,
    Forecast,
    PeakMemory,
    Plan,
    PlannerConfig,
    SiteReading,
    ThermostatReading,
    VehicleReading,
    detect_override,
    detect_powerwall_override,
    plan,
)
from gridmate.energy.state import EnergyState, StateStore
from gridmate.energy.tariff.schedule import Schedule
from gridmate.runtime.clock import Clock
from gridmate.runtime.logs import get_logger

log = get_logger("energy.reconciler")

_JOURNAL_PERIODS = {"peak", "off_peak", "super_off_peak", "partial_peak"}
WAKE_PATIENCE_SECONDS = 300.0
"""After waking a car, how long to wait for it to come online before waking it again."""


@dataclass
class CycleReport:
    at: datetime
    plan: Plan | None
    reading: SiteReading | None
    forecast: Forecast | None
    actions: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """(notifier event kind, facts) the service turns into notifications."""


class Reconciler:
    def __init__(
        self,
        *,
        schedule: Schedule,
        config: PlannerConfig,
        clock: Clock,
        store: StateStore,
        journal: DayJournal,
        powerwall: Powerwall | None,
        thermostats: dict[str, Thermostat],
        vehicles: VehicleSource | None = None,
        weather: WeatherClient | None = None,
        writes_per_day: int = 5,
        dry_run: bool = False,
        gate: Callable[[], str | None] | None = None,
        carried: Callable[[], Baseline | None] | None = None,
        keep_baseline: Callable[[Baseline], None] | None = None,
    ) -> None:
        self.schedule = schedule
        self.config = config
        self.clock = clock
        self.store = store
        self.journal = journal
        self.powerwall = powerwall
        self.thermostats = thermostats
        self.vehicles = vehicles
        self.weather = weather
        self.writes_per_day = writes_per_day
        self.configured_dry_run = dry_run
        self.dry_run = dry_run
        self.gate = gate
        self.carried = carried
        """The pre-peak baseline the other node of a failover pair kept, if any."""
        self.keep_baseline = keep_baseline
        """Hands a newly saved baseline to the other node of a failover pair."""
        self._kept_baseline: Baseline | None = None
        """Asked right before every write: None to go ahead, or why this node must not."""
        self.state: EnergyState = store.load()
        self.last_report: CycleReport | None = None
        self._last_decisions: dict[str, Any] = {}
        self._vehicle_cache: tuple[datetime, dict[str, VehicleReading]] | None = None
        self._woken_at: dict[str, datetime] = {}
        self._last_usage: dict[str, int] = {}

    # ------------------------------------------------------------ reading

    async def _read_site(
        self, now: datetime, report: CycleReport, want_vehicles: bool, phase: str = "idle"
    ) -> SiteReading | None:
        power: PowerwallReading | None = None
        if self.powerwall is not None:
            try:
                # During a peak the reserve is read back more often, so a change a person
                # makes in the Tesla app is seen (and respected) within minutes. Until the
                # Powerwall's restore is verified (a cycle or two), every cycle reads it:
                # the restore is decided, and reported, on what the site has now.
                memory = self.state.memory
                max_age: float | None = None
                if phase == "peak":
                    max_age = self.powerwall.cloud_read_seconds
                elif (
                    phase == "restore"
                    and memory.powerwall_changed
                    and not memory.powerwall_restored
                ):
                    max_age = 0.0
                power = await self.powerwall.read(settings_max_age=max_age)
            except (AdapterError, RateLimitedError) as error:
                report.problems.append(f"powerwall: {error}")
        thermostats: dict[str, ThermostatReading] = {}
        for tid, device in self.thermostats.items():
            try:
                thermostats[tid] = await device.read()
            except AdapterError as error:
                report.problems.append(f"thermostat {tid}: {error}")
        vehicles: dict[str, VehicleReading] = {}
        if self.vehicles is not None and want_vehicles:
            cached = self._vehicle_cache
            # The source says how often it may be read (Fleet reads are billed).
            if cached is None or (now - cached[0]).total_seconds() >= self.vehicles.read_interval:
                try:
                    self._vehicle_cache = (now, await self.vehicles.read())
                except AdapterError as error:
                    report.problems.append(f"vehicles: {error}")
            if self._vehicle_cache is not None:
                vehicles = self._vehicle_cache[1]
        if self.powerwall is not None and power is None:
            return None
        if power is None:
            return SiteReading(soc_percent=None, thermostats=thermostats, vehicles=vehicles)
        return SiteReading(
            soc_percent=power.soc_percent,
            load_kw=power.load_kw,
            solar_kw=power.solar_kw,
            battery_kw=power.battery_kw,
            grid_kw=power.grid_kw,
            reserve_percent=power.reserve_percent,
            mode=power.mode,
            capacity_kwh=power.capacity_kwh,
            max_power_kw=power.max_power_kw,
            thermostats=thermostats,
            vehicles=vehicles,
        )

    # ------------------------------------------------------------ the cycle

    async def cycle(self) -> CycleReport:
        now = self.clock.now()
        report = CycleReport(now, None, None, None)
        today = self.schedule.local_date(now)
        if self.state.roll_day(today):
            log.info("new day", day=today.isoformat())
        forecast = None
        if self.weather is not None:
            forecast = await self.weather.forecast(today)
        report.forecast = forecast

        # What a person set from Home Assistant applies from this cycle on.
        controls = self.state.controls
        config = effective_config(self.config, controls, today)
        self.dry_run = effective_dry_run(self.configured_dry_run, controls)
        memory = self.state.memory
        carried = self.carried() if self.carried is not None else None
        restored_through = self.state.restored_through
        if controls.skip_precool_day == today and memory.precool:
            memory = replace(memory, precool=False)
        preview = plan(
            now, self.schedule, SiteReading(None), forecast, config, memory,
            carried=carried, restored_through=restored_through,
            peak_control=controls.peak_control, ended_day=controls.end_peak_day,
        )  # fmt: skip
        reading = await self._read_site(
            now, report, want_vehicles=preview.phase != "idle", phase=preview.phase
        )
        report.reading = reading
        if reading is None:
            report.problems.append("no Powerwall reading; nothing decided this cycle")
            self._finish(report)
            return report

        # A person's change wins: note it before planning, so the plan leaves it alone.
        for tid, thermostat in reading.thermostats.items():
            if detect_override(tid, memory, thermostat, preview.phase, now):
                memory = replace(memory, overridden=memory.overridden | {tid})
                report.events.append(
                    ("thermostat_override_detected", {"thermostat": tid, "block": preview.block})
                )
                self.journal.append(
                    "decision", at=now, what="override",
                    detail={"thermostat": tid, "setpoint_f": thermostat.cool_setpoint_f,
                            "mode": thermostat.mode},
                )  # fmt: skip
                log.info("thermostat changed by hand; leaving it alone", thermostat=tid)
        by_hand = detect_powerwall_override(memory, reading, preview.phase, config)
        if by_hand:
            memory = replace(memory, powerwall_overridden=True)
            detail = {
                setting: {"written": was, "now": now} for setting, (was, now) in by_hand.items()
            }
            report.events.append(
                ("powerwall_override_detected",
                 {"changes": detail, "reserve": reading.reserve_percent, "mode": reading.mode,
                  "block": preview.block})
            )  # fmt: skip
            self.journal.append(
                "decision", at=now, what="override", detail={"device": "powerwall", **detail}
            )
            log.info("Powerwall changed by hand; leaving it alone until the peak ends",
                     detail=json.dumps(detail, default=str))  # fmt: skip
        for vin in memory.paused:
            car = reading.vehicles.get(vin)
            if car is not None and car.charging and preview.phase == "peak":
                memory = replace(
                    memory,
                    paused=memory.paused - {vin},
                    vehicle_overrides=memory.vehicle_overrides | {vin},
                )
                log.info("car charging again by hand; leaving it alone", vin=vin)

        writes_left = self.writes_per_day - self.state.powerwall_writes
        result = plan(
            now, self.schedule, reading, forecast, config, memory, writes_left=writes_left,
            carried=carried, restored_through=restored_through,
            peak_control=controls.peak_control, ended_day=controls.end_peak_day,
        )  # fmt: skip
        baseline = result.memory.baseline
        # Only a baseline read from the site (no note) is worth handing on.
        kept = self._kept_baseline
        if self.keep_baseline is not None and baseline and not baseline.note and baseline != kept:
            self.keep_baseline(baseline)
            self._kept_baseline = baseline
        report.plan = result
        memory = result.memory
        self._record_decisions(result)
        self._phase_events(result, reading, report)
        # Save the baseline before touching anything.
        self.state.memory = memory
        self.store.save(self.state)

        memory = await self._apply_powerwall(result, reading, memory, report)
        memory = await self._apply_thermostats(result, reading, memory, report)
        memory = await self._apply_vehicles(result, reading, memory, report)

        if result.phase == "restore" and memory.restore_complete:
            # What "restored" rests on: a read-back showing the restore, or nothing to restore.
            powerwall = (
                "read back" if memory.powerwall_restored
                else "changed by hand" if memory.powerwall_overridden
                else "not changed"
            )  # fmt: skip
            self.journal.append(
                "decision", at=now, what="restored",
                detail={"complete": True, "powerwall": powerwall},
            )  # fmt: skip
            log.info("everything restored after peak", powerwall=powerwall)
            if result.block is not None:
                self.state.restored_through = result.block[1]
            memory = PeakMemory()
        elif result.phase == "idle":
            memory = PeakMemory()
        self.state.memory = memory
        self.state.last_phase = result.phase
        self.store.save(self.state)
        self._sample(result, reading)
        self._finish(report)
        return report

    def _finish(self, report: CycleReport) -> None:
        self.last_report = report
        usage = self.api_usage()
        for api, (used, budget) in usage.items():
            if self._last_usage.get(api) != used:
                self._last_usage[api] = used
                self.journal.append("api_usage", at=report.at, api=api, used=used, budget=budget)

    def api_usage(self) -> dict[str, tuple[int, int | None]]:
        usage: dict[str, tuple[int, int | None]] = {}
        if self.powerwall is not None:
            usage["tesla_energy"] = (self.state.powerwall_writes, self.writes_per_day)
        if self.vehicles is not None:
            usage["tesla_vehicle"] = (
                sum(self.state.vehicle_commands.values()),
                self.vehicles.settings.commands_per_day,
            )
        honeywell = [d.health.used_today for d in self.thermostats.values()
                     if d.health.name.startswith("honeywell")]  # fmt: skip
        if honeywell:
            usage["honeywell"] = (sum(honeywell), None)
        if self.weather is not None:
            usage["weather"] = (self.weather.health.used_today, None)
        return usage

    # ------------------------------------------------------------ journal

    def _record_decisions(self, result: Plan) -> None:
        for decision in result.decisions:
            key = decision.what
            fingerprint = dict(decision.detail)
            if self._last_decisions.get(key) == fingerprint:
                continue  # the same reason every minute is one line, not 60
            self._last_decisions[key] = fingerprint
            self.journal.append("decision", at=result.at, what=key, detail=dict(decision.detail))
            log.info("decision", what=key, detail=json.dumps(dict(decision.detail), default=str))

    def _phase_events(self, result: Plan, reading: SiteReading, report: CycleReport) -> None:
        before, now_phase = self.state.last_phase, result.phase
        soc = reading.soc_percent
        if now_phase == "peak" and before != "peak":
            self.journal.append("peak", at=result.at, event="start", soc=soc)
            report.events.append(("peak_started", {"soc": soc, "block": result.block}))
        if before == "peak" and now_phase != "peak":
            self.journal.append("peak", at=result.at, event="end", soc=soc)
            report.events.append(("peak_ended", {"soc": soc, "block": result.block}))
        if any(d.what == "precool" for d in result.decisions):
            detail = next(d.detail for d in result.decisions if d.what == "precool")
            report.events.append(("precool_decided", dict(detail)))

    def _sample(self, result: Plan, reading: SiteReading) -> None:
        period = result.period if result.period in _JOURNAL_PERIODS else "off_peak"
        segment = self.schedule.segment_at(result.at)
        self.journal.append(
            "sample",
            at=result.at,
            soc=reading.soc_percent,
            battery_kw=round(reading.battery_kw, 3),
            grid_kw=round(reading.grid_kw, 3),
            load_kw=round(reading.load_kw, 3),
            solar_kw=round(reading.solar_kw, 3),
            reserve=reading.reserve_percent,
            mode=reading.mode,
            period=period,
            price_per_kwh=segment.price_per_kwh,
            thermostats={
                tid: {
                    "setpoint_f": t.cool_setpoint_f if t.mode != "heat" else t.heat_setpoint_f,
                    "indoor_f": t.indoor_f,
                    "mode": t.mode,
                }
                for tid, t in reading.thermostats.items()
            },
        )

    def _action(
        self, report: CycleReport, device: str, action: str, detail: dict[str, Any],
        ok: bool, error: str | None,
    ) -> None:  # fmt: skip
        entry = {"device": device, "action": action, "detail": detail, "ok": ok, "error": error}
        report.actions.append(entry)
        self.journal.append("action", at=report.at, **entry)
        emit = log.info if ok else log.warning
        emit("action", device=device, action=action, ok=ok, error=error or "-",
             detail=json.dumps(detail, default=str))  # fmt: skip

    def _refused(self, report: CycleReport, device: str) -> bool:
        """Whether the write gate forbids writing now (a failover node that is not, or
        no longer, the one in control); journalled once per reason."""
        reason = self.gate() if self.gate is not None else None
        if reason is None:
            self._last_decisions.pop("write_refused", None)
            return False
        report.problems.append(f"not writing: {reason}")
        detail = {"reason": reason}
        if self._last_decisions.get("write_refused") != detail:
            self._last_decisions["write_refused"] = detail
            self.journal.append("decision", at=report.at, what="write_refused",
                                detail={**detail, "device": device})  # fmt: skip
            log.warning("not writing", device=device, reason=reason)
        return True

    # ------------------------------------------------------------ Powerwall

    async def _apply_powerwall(
        self, result: Plan, reading: SiteReading, memory: PeakMemory, report: CycleReport
    ) -> PeakMemory:
        wish = result.powerwall
        if wish is None or self.powerwall is None:
            return memory
        if reading.reserve_percent is None or reading.mode is None:
            # Not read back since the last write (its answer or the read-back was lost):
            # deciding on the older reading would be a guess. The next read settles it.
            report.problems.append(
                "Powerwall reserve and mode unknown (not read since the last write, or never); "
                "nothing decided for it until a read works"
            )
            return memory
        changes: list[tuple[str, object]] = []
        restoring = result.phase == "restore"
        reserve_change = ("backup_reserve_percent", wish.reserve_percent)
        mode_change = ("default_real_mode", wish.mode)
        if reading.reserve_percent != wish.reserve_percent:
            changes.append(reserve_change)
        if reading.mode != wish.mode:
            # Restoring: reserve first, so Time-Based Control never runs with the peak floor.
            changes.insert(0 if not restoring else len(changes), mode_change)
        if not changes:
            if restoring and not memory.powerwall_restored:
                memory = self._restore_verified(
                    result, wish, memory, report, by_this_node=self._may_write()
                )
            return memory
        read_back = 0
        for setting, value in changes:
            tag = f"{setting}={value}"
            action = "set_backup_reserve" if setting == "backup_reserve_percent" else "set_mode"
            detail = {"value": value, "reason": wish.reason, "phase": result.phase}
            if tag in self.state.rejected:
                continue
            if self.dry_run:
                self._action(report, "powerwall", action, {**detail, "dry_run": True}, True, None)
                continue
            if self._refused(report, "powerwall"):
                break
            if self.state.powerwall_writes >= self.writes_per_day:
                self._action(report, "powerwall", action, detail, False,
                             f"daily write budget of {self.writes_per_day} used up")  # fmt: skip
                report.problems.append("Powerwall write budget used up for today")
                if restoring:
                    report.events.append(("reserve_restore_failed", {"reason": "write budget"}))
                break
            # Counted before sending, so a crash mid-write cannot forget it.
            self.state.powerwall_writes += 1
            self.store.save(self.state)
            if setting == "backup_reserve_percent":
                outcome = await self.powerwall.write_reserve(int(str(value)))
            else:
                outcome = await self.powerwall.write_mode(str(value))
            if not outcome.counts:
                self.state.powerwall_writes -= 1
                self.store.save(self.state)
            if outcome.answer_lost is not None:
                detail = {**detail, "answer_lost": outcome.answer_lost}
            if outcome.unknown:
                # Not a failure: nobody knows yet. The next cycle reads the site first.
                self._action(report, "powerwall", action, {**detail, "outcome": "unknown"},
                             False, outcome.error)  # fmt: skip
                report.problems.append(f"Powerwall: {outcome.error}")
                if not restoring:
                    # It may have been applied: if so, it must be restored after the peak.
                    memory = replace(memory, powerwall_changed=True)
                break
            if not outcome.ok:
                if outcome.rejected:
                    # Tesla refused this value: asking again today only burns budget.
                    self.state.rejected.append(tag)
                self._action(report, "powerwall", action, detail, False, outcome.error)
                if restoring:
                    report.events.append(("reserve_restore_failed", {"reason": outcome.error}))
                break
            self._action(report, "powerwall", action, {**detail, "verified": outcome.verified},
                         outcome.verified, outcome.error)  # fmt: skip
            if not outcome.verified:
                if not restoring:
                    # Tesla accepted it: whatever the site shows later, restore after the peak.
                    memory = replace(memory, powerwall_changed=True)
                break
            read_back += 1
            if not restoring:
                memory = replace(
                    memory,
                    powerwall_changed=True,
                    powerwall_written={**memory.powerwall_written, setting: value},
                )
        if restoring and read_back == len(changes):
            # Every restore write read back as written: restored now, not a cycle later
            # (a failover node may be stopped before its next cycle).
            memory = self._restore_verified(result, wish, memory, report)
        return memory

    def _may_write(self) -> bool:
        """Whether this node is the one in control now (always, without failover)."""
        return self.gate is None or self.gate() is None

    def _restore_verified(
        self, result: Plan, wish: DesiredPowerwall, memory: PeakMemory, report: CycleReport,
        *, by_this_node: bool = True,
    ) -> PeakMemory:  # fmt: skip
        detail: dict[str, Any] = {
            "restored": True, "reserve": wish.reserve_percent, "mode": wish.mode
        }  # fmt: skip
        if not by_this_node:
            # The node in control restored it and announces it: a second announcement
            # from here would race the mirrored notification ledger (two mails).
            detail["by"] = "the node in control"
        self.journal.append("decision", at=result.at, what="reserve", detail=detail)
        if by_this_node:
            report.events.append(
                ("reserve_restore_verified",
                 {"reserve": wish.reserve_percent, "mode": wish.mode, "block": result.block})
            )  # fmt: skip
        return replace(memory, powerwall_restored=True)

    # ------------------------------------------------------------ thermostats

    def _satisfied(
        self, device: Thermostat, wish: DesiredThermostat, reading: ThermostatReading
    ) -> bool:
        if device.supports_holds:
            return wish.satisfied_by(reading)

        def close(want: float | None, have: float | None) -> bool:
            return want is None or (have is not None and abs(want - have) < SETPOINT_TOLERANCE_F)

        return close(wish.cool_setpoint_f, reading.cool_setpoint_f) and close(
            wish.heat_setpoint_f, reading.heat_setpoint_f
        )

    async def _apply_thermostats(
        self, result: Plan, reading: SiteReading, memory: PeakMemory, report: CycleReport
    ) -> PeakMemory:
        for tid, wish in result.thermostats.items():
            device = self.thermostats.get(tid)
            current = reading.thermostats.get(tid)
            if wish is None or device is None or current is None:
                continue
            restoring = result.phase == "restore"
            if self._satisfied(device, wish, current):
                if restoring and tid in memory.touched:
                    memory = _forget(memory, tid)
                    self.journal.append("decision", at=result.at, what="thermostat_restored",
                                        detail={"thermostat": tid})  # fmt: skip
                continue
            detail = {
                "cool_setpoint_f": wish.cool_setpoint_f,
                "heat_setpoint_f": wish.heat_setpoint_f,
                "hold": wish.hold,
                "hold_until": wish.hold_until.isoformat() if wish.hold_until else None,
                "reason": wish.reason,
            }
            if self.dry_run:
                self._action(report, f"thermostat:{tid}", "set", {**detail, "dry_run": True},
                             True, None)  # fmt: skip
                continue
            if self._refused(report, f"thermostat:{tid}"):
                continue
            try:
                await device.write(wish)
                after = await device.read(force=True)
            except (AdapterError, RateLimitedError) as error:
                self._action(report, f"thermostat:{tid}", "set", detail, False, str(error))
                continue
            verified = self._satisfied(device, wish, after)
            self._action(report, f"thermostat:{tid}", "set", {**detail, "verified": verified},
                         verified, None if verified else "read back differs")  # fmt: skip
            if not verified:
                continue
            if restoring:
                memory = _forget(memory, tid)
            else:
                memory = replace(
                    memory,
                    touched=memory.touched | {tid},
                    commanded={**memory.commanded,
                               tid: (after.cool_setpoint_f, after.heat_setpoint_f,
                                     wish.hold_until.isoformat() if wish.hold_until else None)},
                )  # fmt: skip
        return memory

    # ------------------------------------------------------------ cars

    async def _apply_vehicles(
        self, result: Plan, reading: SiteReading, memory: PeakMemory, report: CycleReport
    ) -> PeakMemory:
        if self.vehicles is None:
            return memory
        for vin, wish in result.vehicles.items():
            car = reading.vehicles.get(vin)
            if wish is None or car is None:
                continue
            if wish == "stopped" and (not car.charging or vin in memory.paused):
                continue
            if wish == "charging" and car.asleep:
                # Paused by gridmate and asleep since: it has to be woken to charge again.
                # It stays paused; the next cycle sees it online and starts charging.
                await self._wake_vehicle(vin, result, report)
                continue
            if wish == "charging" and (car.charging or not car.at_home):
                memory = replace(memory, paused=memory.paused - {vin})
                continue
            action = "charge_stop" if wish == "stopped" else "charge_start"
            if self.dry_run:
                self._action(report, f"vehicle:{vin}", action, {"dry_run": True}, True, None)
                continue
            if self._refused(report, f"vehicle:{vin}"):
                continue
            try:
                achieved = await self.vehicles.command(vin, wish)
            except (AdapterError, RateLimitedError) as error:
                self._action(report, f"vehicle:{vin}", action, {}, False, str(error))
                continue
            self.state.vehicle_commands[vin] = self.state.vehicle_commands.get(vin, 0) + 1
            self._vehicle_cache = None  # see the car's new state next cycle
            self._action(report, f"vehicle:{vin}", action, {"phase": result.phase}, achieved,
                         None if achieved else "car did not confirm")  # fmt: skip
            if achieved:
                memory = replace(
                    memory,
                    paused=memory.paused | {vin} if wish == "stopped" else memory.paused - {vin},
                )
        return memory

    async def _wake_vehicle(self, vin: str, result: Plan, report: CycleReport) -> None:
        assert self.vehicles is not None
        woken = self._woken_at.get(vin)
        if woken is not None and (result.at - woken).total_seconds() < WAKE_PATIENCE_SECONDS:
            return  # a wake takes up to a minute or so; waking again only burns budget
        detail = {"phase": result.phase, "reason": "resume charging paused for the peak"}
        if self.dry_run:
            self._action(report, f"vehicle:{vin}", "wake_up", {**detail, "dry_run": True},
                         True, None)  # fmt: skip
            return
        if self._refused(report, f"vehicle:{vin}"):
            return
        try:
            await self.vehicles.wake(vin)
        except (AdapterError, RateLimitedError) as error:
            self._action(report, f"vehicle:{vin}", "wake_up", detail, False, str(error))
            return
        self.state.vehicle_commands[vin] = self.state.vehicle_commands.get(vin, 0) + 1
        self._woken_at[vin] = result.at
        self._vehicle_cache = None  # read the car again next cycle, awake
        self._action(report, f"vehicle:{vin}", "wake_up", detail, True, None)


def _forget(memory: PeakMemory, tid: str) -> PeakMemory:
    """A thermostat is back as it was: nothing of it is left to restore."""
    return replace(
        memory,
        touched=memory.touched - {tid},
        commanded={k: v for k, v in memory.commanded.items() if k != tid},
    )
