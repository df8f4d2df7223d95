"""What the house should look like right now: a pure function of the inputs.

:func:`plan` takes the time, the compiled tariff, a reading of the site, the
forecast, the configuration and the :class:`PeakMemory` (the saved pre-peak
baseline and what gridmate did during this peak) and returns a
:class:`Plan`: the desired Powerwall reserve and mode, thermostat setpoints
and holds, which cars should be paused, the decisions behind them, and the
memory to keep. Nothing here does I/O or reads a clock, so a restart that
loads the same memory computes the same desired state, and a benchmark can
replay a year of minutes.

``None`` in a desired field means "leave it alone": gridmate only touches what
it must, restores only what it changed, and stops touching a thermostat or a
car the moment a person overrides it.

Phases of a controlled block (a peak, by default):

``precool``   from ``block start - lead`` to block start: the baseline is saved;
              when the forecast high reaches the threshold, cool to
              ``baseline - delta`` and hold until the block starts.
``peak``      the block: reserve to the peak reserve in the peak mode; the
              battery ladder (and the energy-versus-time rule) raise cooling
              setpoints (lower heating ones) and hold until the block ends; home
              charging paused when it would come from the grid or the battery.
``restore``   after the block, until every change is restored and verified.
``idle``      otherwise: nothing is desired.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from functools import cached_property
from typing import Any, Literal

from gridmate.energy.settings import ReserveSettings, ThermostatPolicy
from gridmate.energy.tariff.schedule import Schedule, as_utc

__all__ = [
    "Baseline",
    "DesiredPowerwall",
    "DesiredThermostat",
    "Forecast",
    "PeakMemory",
    "Plan",
    "PlannerConfig",
    "SiteReading",
    "ThermostatBaseline",
    "ThermostatReading",
    "VehicleReading",
    "accepted_reserve",
    "ladder_level",
    "plan",
]

Phase = Literal["idle", "precool", "peak", "restore"]
Hold = Literal["schedule", "temporary", "permanent", "until"]
SETPOINT_TOLERANCE_F = 0.6


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ThermostatReading:
    mode: str
    """'cool', 'heat', 'auto' or 'off'."""
    cool_setpoint_f: float | None
    heat_setpoint_f: float | None
    indoor_f: float | None = None
    hold: Hold = "schedule"


@dataclass(frozen=True)
class VehicleReading:
    charging: bool
    at_home: bool = True
    charge_power_kw: float = 0.0
    asleep: bool = False
    """Asleep: where it is and whether it is plugged in are unknown until it wakes."""


@dataclass(frozen=True)
class SiteReading:
    soc_percent: float | None
    """Battery state of charge on the app's scale."""
    load_kw: float = 0.0
    solar_kw: float = 0.0
    battery_kw: float = 0.0
    grid_kw: float = 0.0
    reserve_percent: int | None = None
    mode: str | None = None
    capacity_kwh: float = 13.5
    max_power_kw: float = 5.0
    thermostats: Mapping[str, ThermostatReading] = field(default_factory=dict)
    vehicles: Mapping[str, VehicleReading] = field(default_factory=dict)


@dataclass(frozen=True)
class Forecast:
    day: date
    high_f: float | None
    source: str
    fetched_at: datetime | None = None


@dataclass(frozen=True)
class PlannerConfig:
    """The parts of the settings the planner reads, bundled once."""

    reserve: ReserveSettings
    policy: ThermostatPolicy
    controlled_periods: frozenset[str] = frozenset({"peak"})
    thermostat_ids: tuple[str, ...] = ()
    ev_enabled: bool = False
    ev_vins: tuple[str, ...] = ()
    """Empty: every car in the reading."""

    @cached_property
    def precool_lead(self) -> timedelta:
        """``policy.precool_lead_minutes`` as a duration, made once per configuration
        (the configuration is immutable) rather than once per cycle."""
        return timedelta(minutes=self.policy.precool_lead_minutes)

    @cached_property
    def peak_target(self) -> DesiredPowerwall:
        """The Powerwall setting for a controlled block, made once per configuration."""
        return DesiredPowerwall(
            self.reserve.peak_reserve_percent,
            _peak_mode(self.reserve),
            "peak: run the house from the battery",
        )


# ---------------------------------------------------------------- memory


@dataclass(frozen=True)
class ThermostatBaseline:
    mode: str
    cool_setpoint_f: float | None
    heat_setpoint_f: float | None
    hold: Hold


@dataclass(frozen=True)
class Baseline:
    """The site as it was before gridmate changed anything for a block."""

    block_start: datetime
    block_end: datetime
    reserve_percent: int
    mode: str
    thermostats: Mapping[str, ThermostatBaseline]
    captured_at: datetime
    note: str = ""


@dataclass(frozen=True)
class PeakMemory:
    """What must survive a restart: the baseline and what gridmate did since."""

    baseline: Baseline | None = None
    precool: bool | None = None
    """The precool decision for the block, once made (a later forecast does not flip it)."""
    ladder_level: int = 0
    powerwall_changed: bool = False
    powerwall_restored: bool = False
    powerwall_overridden: bool = False
    """A person changed the reserve or mode during the block: left alone from then on."""
    powerwall_written: Mapping[str, Any] = field(default_factory=dict)
    """The peak settings gridmate wrote and verified for this block, by setting name
    (``backup_reserve_percent``, ``default_real_mode``)."""
    touched: frozenset[str] = frozenset()
    """Thermostats gridmate wrote for this block and has not restored yet."""
    commanded: Mapping[str, tuple[float | None, float | None, str | None]] = field(
        default_factory=dict
    )
    """The (cool, heat, hold end as ISO text or None) last written to each thermostat."""
    overridden: frozenset[str] = frozenset()
    paused: frozenset[str] = frozenset()
    """Cars gridmate paused and has not resumed yet."""
    vehicle_overrides: frozenset[str] = frozenset()

    @property
    def restore_complete(self) -> bool:
        powerwall_done = (
            not self.powerwall_changed or self.powerwall_restored or self.powerwall_overridden
        )
        return powerwall_done and not (self.touched - self.overridden) and not self.paused

    def to_json(self) -> dict[str, Any]:
        def when(value: datetime) -> str:
            return value.isoformat()

        baseline = None
        if self.baseline is not None:
            b = self.baseline
            baseline = {
                "block_start": when(b.block_start),
                "block_end": when(b.block_end),
                "reserve_percent": b.reserve_percent,
                "mode": b.mode,
                "thermostats": {
                    k: {
                        "mode": t.mode,
                        "cool_setpoint_f": t.cool_setpoint_f,
                        "heat_setpoint_f": t.heat_setpoint_f,
                        "hold": t.hold,
                    }
                    for k, t in b.thermostats.items()
                },
                "captured_at": when(b.captured_at),
                "note": b.note,
            }
        return {
            "baseline": baseline,
            "precool": self.precool,
            "ladder_level": self.ladder_level,
            "powerwall_changed": self.powerwall_changed,
            "powerwall_restored": self.powerwall_restored,
            "powerwall_overridden": self.powerwall_overridden,
            "powerwall_written": dict(self.powerwall_written),
            "touched": sorted(self.touched),
            "commanded": {k: list(v) for k, v in self.commanded.items()},
            "overridden": sorted(self.overridden),
            "paused": sorted(self.paused),
            "vehicle_overrides": sorted(self.vehicle_overrides),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PeakMemory:
        raw = data.get("baseline")
        baseline = None
        if raw:
            baseline = Baseline(
                block_start=datetime.fromisoformat(raw["block_start"]),
                block_end=datetime.fromisoformat(raw["block_end"]),
                reserve_percent=int(raw["reserve_percent"]),
                mode=str(raw["mode"]),
                thermostats={
                    k: ThermostatBaseline(
                        mode=t["mode"],
                        cool_setpoint_f=t.get("cool_setpoint_f"),
                        heat_setpoint_f=t.get("heat_setpoint_f"),
                        hold=t.get("hold", "schedule"),
                    )
                    for k, t in (raw.get("thermostats") or {}).items()
                },
                captured_at=datetime.fromisoformat(raw["captured_at"]),
                note=raw.get("note", ""),
            )
        return cls(
            baseline=baseline,
            precool=data.get("precool"),
            ladder_level=int(data.get("ladder_level", 0)),
            powerwall_changed=bool(data.get("powerwall_changed", False)),
            powerwall_restored=bool(data.get("powerwall_restored", False)),
            powerwall_overridden=bool(data.get("powerwall_overridden", False)),
            powerwall_written=dict(data.get("powerwall_written") or {}),
            touched=frozenset(data.get("touched", ())),
            commanded={
                k: (v[0], v[1], v[2] if len(v) > 2 else None)
                for k, v in (data.get("commanded") or {}).items()
            },
            overridden=frozenset(data.get("overridden", ())),
            paused=frozenset(data.get("paused", ())),
            vehicle_overrides=frozenset(data.get("vehicle_overrides", ())),
        )


_EMPTY_MEMORY = PeakMemory()


# ---------------------------------------------------------------- outputs


@dataclass(frozen=True)
class DesiredPowerwall:
    reserve_percent: int
    mode: str
    reason: str


@dataclass(frozen=True)
class DesiredThermostat:
    cool_setpoint_f: float | None
    heat_setpoint_f: float | None
    hold: Hold
    hold_until: datetime | None
    reason: str

    def satisfied_by(self, reading: ThermostatReading) -> bool:
        def close(want: float | None, have: float | None) -> bool:
            return want is None or (have is not None and abs(want - have) < SETPOINT_TOLERANCE_F)

        if self.hold == "schedule":
            # Back on its schedule: the schedule decides the setpoints.
            return reading.hold == "schedule"
        return close(self.cool_setpoint_f, reading.cool_setpoint_f) and close(
            self.heat_setpoint_f, reading.heat_setpoint_f
        )


VehicleWish = Literal["stopped", "charging"]


@dataclass(frozen=True)
class Decision:
    what: str
    detail: Mapping[str, Any]


@dataclass(frozen=True)
class Plan:
    at: datetime
    phase: Phase
    period: str
    block: tuple[datetime, datetime] | None
    """The controlled block this plan is about (current, next, or being restored)."""
    powerwall: DesiredPowerwall | None
    thermostats: Mapping[str, DesiredThermostat | None]
    vehicles: Mapping[str, VehicleWish | None]
    decisions: tuple[Decision, ...]
    memory: PeakMemory
    minutes_left: float | None = None
    raise_f: float = 0.0


# ---------------------------------------------------------------- rules


def accepted_reserve(percent: int) -> int:
    """The nearest reserve current Powerwall firmware accepts (0-80 or 100)."""
    if percent >= 100:
        return 100
    return max(0, min(percent, 80))


def ladder_level(
    policy: ThermostatPolicy,
    minutes_left: float,
    soc_percent: float | None,
    *,
    energy_short: bool = False,
) -> int:
    """How many ladder steps the battery and the clock call for right now."""
    if soc_percent is None:
        return 0
    satisfied = sum(
        1
        for step in policy.ladder
        if minutes_left <= step.minutes_left and soc_percent <= step.soc_at_most
    )
    if energy_short and policy.energy_rule:
        satisfied += 1
    return min(satisfied, len(policy.ladder))


def energy_shortfall(
    site: SiteReading, floor_percent: int, minutes_left: float, *, pausing_kw: float = 0.0
) -> dict[str, float]:
    """Energy the house will need until the block ends versus what the battery holds.

    ``pausing_kw``: the draw of cars being paused, in the reading's load but not the
    house's from now on.
    """
    soc = site.soc_percent or 0.0
    available = max(0.0, (soc - floor_percent) / 100.0 * site.capacity_kwh)
    load_kw = max(0.0, site.load_kw - pausing_kw)
    house_kw = max(0.0, load_kw - site.solar_kw)
    needed = house_kw * max(0.0, minutes_left) / 60.0
    return {
        "available_kwh": round(available, 3),
        "needed_kwh": round(needed, 3),
        "house_kw": round(house_kw, 3),
        "battery_limit_kw": site.max_power_kw,
    }


def _is_short(numbers: Mapping[str, float]) -> bool:
    return (
        numbers["needed_kwh"] > numbers["available_kwh"]
        or numbers["house_kw"] > numbers["battery_limit_kw"]
    )


def _hold_reading(reading: ThermostatReading) -> ThermostatBaseline:
    return ThermostatBaseline(
        reading.mode, reading.cool_setpoint_f, reading.heat_setpoint_f, reading.hold
    )


def _capture_baseline(
    at: datetime,
    block: tuple[datetime, datetime],
    site: SiteReading,
    config: PlannerConfig,
    in_block: bool,
    carried: Baseline | None = None,
) -> Baseline:
    reserve = site.reserve_percent
    mode = site.mode
    note = ""
    peak_reserve = config.reserve.peak_reserve_percent
    looks_like_ours = reserve == peak_reserve and mode == _peak_mode(config.reserve)
    if reserve is None or mode is None or (in_block and looks_like_ours):
        if carried is not None and carried.block_start == block[0] and not carried.note:
            # The other node of a failover pair saw the settings before this block.
            reserve, mode = carried.reserve_percent, carried.mode
            note = "pre-peak settings carried over from the other node"
        else:
            # Started inside a block with the battery already in its peak setting:
            # what it was before is unknown, so the configured fallback is restored.
            reserve, mode = config.reserve.fallback_reserve_percent, "self_consumption"
            note = "pre-peak settings unknown; using the configured fallback"
    thermostats = {
        tid: _hold_reading(site.thermostats[tid])
        for tid in config.thermostat_ids
        if tid in site.thermostats
    }
    return Baseline(
        block_start=block[0],
        block_end=block[1],
        reserve_percent=int(reserve),
        mode=str(mode),
        thermostats=thermostats,
        captured_at=at,
        note=note,
    )


def _peak_mode(reserve: ReserveSettings) -> str:
    return "backup" if reserve.peak_reserve_percent == 100 else reserve.peak_mode


def _restore_target(config: PlannerConfig, baseline: Baseline) -> DesiredPowerwall:
    wanted = config.reserve.restore_reserve_percent
    percent = accepted_reserve(baseline.reserve_percent if wanted is None else wanted)
    return DesiredPowerwall(percent, baseline.mode, "restore the pre-peak setting")


ADOPT_RESTORE_WITHIN = timedelta(hours=3)
"""How long after a controlled block a node that did not see it still restores a Powerwall
it finds in the peak setting (a takeover at or just after the block's end)."""


def _block_left_in_peak_setting(
    at: datetime, schedule: Schedule, site: SiteReading, config: PlannerConfig
) -> tuple[datetime, datetime] | None:
    """The block that ended within :data:`ADOPT_RESTORE_WITHIN` before ``at`` when the
    site still reads as that block's peak setting (and restoring would change it)."""
    target = config.peak_target
    if site.reserve_percent != target.reserve_percent or site.mode != target.mode:
        return None
    peak = (target.reserve_percent, target.mode)
    block = schedule.next_block(at - ADOPT_RESTORE_WITHIN, config.controlled_periods)
    if block is None or block[1] > at:
        return None
    fallback = Baseline(block[0], block[1], config.reserve.fallback_reserve_percent,
                        "self_consumption", {}, at)  # fmt: skip
    restore = _restore_target(config, fallback)
    if (restore.reserve_percent, restore.mode) == peak:
        return None  # restoring would change nothing: nothing to own
    return block


def _writes_between(a: DesiredPowerwall, reserve: int | None, mode: str | None) -> int:
    return int(a.reserve_percent != reserve) + int(a.mode != mode)


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


# ---------------------------------------------------------------- the planner


def precool_reason(phase: str, enabled: bool, high: float | None, threshold: float) -> str:
    """Why precooling is on or off, in words that are true for every combination."""
    if not enabled:
        return "precooling is turned off (policy.precool = false)"
    if phase == "peak":
        return "peak already started"
    if high is None:
        return "no forecast"
    relation = ">=" if high >= threshold else "<"
    return f"forecast high {high:g} °F {relation} {threshold:g} °F"


def plan(
    at: datetime,
    schedule: Schedule,
    site: SiteReading,
    forecast: Forecast | None,
    config: PlannerConfig,
    memory: PeakMemory,
    *,
    writes_left: int | None = None,
    carried: Baseline | None = None,
    restored_through: datetime | None = None,
    peak_control: bool = True,
    ended_day: date | None = None,
) -> Plan:
    """The desired state at ``at``. ``writes_left``: Powerwall writes left today;
    ``carried``: the pre-peak baseline another node of a failover pair saved, used
    when this node has to capture one and cannot see the settings from before;
    ``restored_through``: the end of the last block this node restored (a Powerwall
    in the peak setting after it is a person's choice, not a restore left over).

    ``peak_control`` off, or ``ended_day`` the local day a block starts on, stands
    the block down: what gridmate changed is restored (once), then nothing is written.
    """
    decisions: list[Decision] = []
    # The schedule's blocks are in UTC: the same instant in UTC compares with them
    # without a time-zone lookup per comparison.
    now = as_utc(at)
    segment, block = schedule.segment_and_block(now, config.controlled_periods)
    phase: Phase = "idle"
    if block is not None and block[0] <= now < block[1]:
        phase = "peak"
    elif block is not None and block[0] - now <= config.precool_lead and block[0] > now:
        phase = "precool"
    elif memory.baseline is not None and at >= memory.baseline.block_end:
        phase = "restore"
        block = (memory.baseline.block_start, memory.baseline.block_end)
    elif (ended := _block_left_in_peak_setting(at, schedule, site, config)) is not None and (
        restored_through is None or ended[1] > restored_through
    ):
        # This node did not see the block (it took over as or after it ended), but the
        # Powerwall is still in the peak setting: the restore is this node's to do.
        block = ended
        phase = "restore"
        captured = _capture_baseline(at, ended, site, config, in_block=True, carried=carried)
        memory = replace(memory, baseline=captured, powerwall_changed=True)
        decisions.append(
            Decision(
                "reserve",
                {
                    "adopted": True,
                    "reason": "the Powerwall is still in its peak setting after the peak; "
                    "restoring it",
                    "reserve": site.reserve_percent,
                    "mode": site.mode,
                    "restore_reserve": _restore_target(config, captured).reserve_percent,
                },
            )
        )

    if phase in ("precool", "peak") and block is not None:
        reason = None
        if not peak_control:
            reason = "peak control is switched off"
        elif ended_day is not None and schedule.local_date(block[0]) == ended_day:
            reason = "peak control ended for today"
        if reason is not None:
            decisions.append(Decision("stand_down", {"reason": reason}))
            if memory.baseline is not None and not memory.restore_complete:
                phase = "restore"
                block = (memory.baseline.block_start, memory.baseline.block_end)
            else:
                phase = "idle"

    if phase == "idle":
        return Plan(at, phase, segment.period, block, None, {}, {}, tuple(decisions), _EMPTY_MEMORY)
    assert block is not None

    # --- the baseline: saved once per block, before anything is changed
    if phase in ("precool", "peak") and memory.baseline is None:
        captured = _capture_baseline(
            at, block, site, config, in_block=phase == "peak", carried=carried
        )
        memory = replace(memory, baseline=captured)
        decisions.append(
            Decision(
                "baseline",
                {
                    "reserve": captured.reserve_percent,
                    "mode": captured.mode,
                    "thermostats": {
                        k: {"cool_setpoint_f": t.cool_setpoint_f, "hold": t.hold}
                        for k, t in captured.thermostats.items()
                    },
                    "note": captured.note,
                },
            )
        )
    baseline = memory.baseline
    assert baseline is not None

    minutes_left = (block[1] - now).total_seconds() / 60.0 if phase == "peak" else None

    # --- precool decision (made once per block)
    if phase in ("precool", "peak") and memory.precool is None:
        high = forecast.high_f if forecast is not None else None
        decided = (
            phase == "precool"
            and config.policy.precool
            and high is not None
            and high >= config.policy.precool_threshold_f
        )
        memory = replace(memory, precool=decided)
        decisions.append(
            Decision(
                "precool",
                {
                    "decided": decided,
                    "forecast_high_f": high,
                    "source": forecast.source if forecast is not None else None,
                    "threshold_f": config.policy.precool_threshold_f,
                    "enabled": config.policy.precool,
                    "reason": precool_reason(
                        phase, config.policy.precool, high, config.policy.precool_threshold_f
                    ),
                },
            )
        )

    vehicles, car_decisions = _plan_vehicles(phase, site, config, memory)

    # --- battery ladder and the energy-versus-time rule
    raise_f = 0.0
    if phase == "peak":
        assert minutes_left is not None
        floor = config.reserve.peak_reserve_percent
        # A car this plan pauses stops drawing in a moment: it is not the house's draw.
        pausing_kw = sum(
            car.charge_power_kw
            for vin, wish in vehicles.items()
            if wish == "stopped" and (car := site.vehicles.get(vin)) is not None and car.charging
        )
        numbers = energy_shortfall(site, floor, minutes_left, pausing_kw=pausing_kw)
        short = _is_short(numbers)
        level = ladder_level(config.policy, minutes_left, site.soc_percent, energy_short=short)
        if level > memory.ladder_level:
            decisions.append(
                Decision(
                    "ladder",
                    {
                        "level": level,
                        "was": memory.ladder_level,
                        "minutes_left": round(minutes_left, 1),
                        "soc": site.soc_percent,
                        "energy_rule": short and config.policy.energy_rule,
                        **numbers,
                    },
                )
            )
            # The ladder only climbs during a block: a sunny minute does not undo a step.
            memory = replace(memory, ladder_level=level)
        raise_f = sum(step.raise_f for step in config.policy.ladder[: memory.ladder_level])

    # --- Powerwall
    powerwall: DesiredPowerwall | None = None
    if phase == "peak" and not memory.powerwall_overridden:
        target = config.peak_target
        restore = _restore_target(config, baseline)
        if (
            not memory.powerwall_changed
            and (site.reserve_percent, site.mode) == (target.reserve_percent, target.mode)
            and (restore.reserve_percent, restore.mode) != (target.reserve_percent, target.mode)
        ):
            # Already in the peak setting without a write of this node's (the other node
            # of a failover pair set it, or a restart lost the write): whoever finds the
            # site in its peak setting owns the restore after the peak.
            memory = replace(memory, powerwall_changed=True)
            decisions.append(
                Decision(
                    "reserve",
                    {
                        "adopted": True,
                        "reason": "the Powerwall is already in its peak setting; "
                        "restoring it after the peak",
                        "reserve": site.reserve_percent,
                        "mode": site.mode,
                        "restore_reserve": restore.reserve_percent,
                    },
                )
            )
        needed = _writes_between(target, site.reserve_percent, site.mode) + _writes_between(
            restore, target.reserve_percent, target.mode
        )
        if memory.powerwall_changed or writes_left is None or writes_left >= needed:
            powerwall = target
        else:
            decisions.append(
                Decision(
                    "reserve",
                    {
                        "skipped": True,
                        "reason": "not enough Powerwall writes left today to change and restore",
                        "writes_left": writes_left,
                        "writes_needed": needed,
                    },
                )
            )
    elif (
        phase == "restore"
        and memory.powerwall_changed
        and not memory.powerwall_restored
        and not memory.powerwall_overridden
    ):
        powerwall = _restore_target(config, baseline)

    # --- thermostats
    thermostats: dict[str, DesiredThermostat | None] = {}
    policy = config.policy
    for tid in config.thermostat_ids:
        base = baseline.thermostats.get(tid)
        reading = site.thermostats.get(tid)
        if base is None or tid in memory.overridden or base.mode == "off":
            thermostats[tid] = None
            continue
        cools = base.mode in ("cool", "auto") and base.cool_setpoint_f is not None
        heats = base.mode in ("heat", "auto") and base.heat_setpoint_f is not None
        wish: DesiredThermostat | None = None
        if phase == "precool" and memory.precool and cools:
            assert base.cool_setpoint_f is not None
            wish = DesiredThermostat(
                cool_setpoint_f=_clamp(
                    base.cool_setpoint_f - policy.precool_delta_f,
                    policy.min_cool_setpoint_f,
                    policy.max_cool_setpoint_f,
                ),
                heat_setpoint_f=base.heat_setpoint_f,
                hold="until",
                hold_until=block[0],
                reason=f"precool {policy.precool_delta_f:g} °F below the setpoint",
            )
        elif phase == "precool" and not memory.precool and tid in memory.touched:
            # Precooling was called off after it started: back to the saved setting.
            wish = DesiredThermostat(
                cool_setpoint_f=base.cool_setpoint_f,
                heat_setpoint_f=base.heat_setpoint_f,
                hold=base.hold,
                hold_until=None,
                reason="precool skipped: back to the pre-peak setting",
            )
        elif phase == "peak" and (raise_f > 0 or tid in memory.touched):
            cool = base.cool_setpoint_f
            heat = base.heat_setpoint_f
            if cools and cool is not None:
                cool = _clamp(
                    cool + raise_f, policy.min_cool_setpoint_f, policy.max_cool_setpoint_f
                )
            if heats and heat is not None:
                heat = max(policy.min_heat_setpoint_f, heat - raise_f)
            wish = DesiredThermostat(
                cool_setpoint_f=cool,
                heat_setpoint_f=heat,
                hold="until",
                hold_until=block[1],
                reason=f"battery ladder step {memory.ladder_level} (+{raise_f:g} °F)"
                if raise_f
                else "peak: back to the setpoint before precooling",
            )
        elif phase == "restore" and tid in memory.touched:
            wish = DesiredThermostat(
                cool_setpoint_f=base.cool_setpoint_f,
                heat_setpoint_f=base.heat_setpoint_f,
                hold=base.hold,
                hold_until=None,
                reason="restore the pre-peak setting",
            )
        if wish is not None and reading is not None and reading.mode == "off":
            wish = None  # someone switched it off; nothing to do
        thermostats[tid] = wish

    # --- cars (planned before the ladder; their decisions are recorded here)
    decisions.extend(car_decisions)

    return Plan(
        at=at,
        phase=phase,
        period=segment.period,
        block=block,
        powerwall=powerwall,
        thermostats=thermostats,
        vehicles=vehicles,
        decisions=tuple(decisions),
        memory=memory,
        minutes_left=minutes_left,
        raise_f=raise_f,
    )


def _plan_vehicles(
    phase: Phase, site: SiteReading, config: PlannerConfig, memory: PeakMemory
) -> tuple[dict[str, VehicleWish | None], list[Decision]]:
    """Which cars to pause or resume, and the decisions behind pausing them."""
    decisions: list[Decision] = []
    vehicles: dict[str, VehicleWish | None] = {}
    if config.ev_enabled:
        vins = config.ev_vins or tuple(site.vehicles)
        for vin in vins:
            car = site.vehicles.get(vin)
            if vin in memory.vehicle_overrides:
                vehicles[vin] = None
            elif phase == "peak":
                if vin in memory.paused:
                    vehicles[vin] = "stopped"
                elif car is not None and car.charging and car.at_home:
                    house_without_car = max(0.0, site.load_kw - car.charge_power_kw)
                    surplus = site.solar_kw - house_without_car
                    if surplus >= car.charge_power_kw > 0:
                        vehicles[vin] = None
                    else:
                        vehicles[vin] = "stopped"
                        decisions.append(
                            Decision(
                                "ev_pause",
                                {
                                    "vin": vin,
                                    "charge_kw": car.charge_power_kw,
                                    "solar_surplus_kw": round(surplus, 3),
                                },
                            )
                        )
                else:
                    vehicles[vin] = None
            elif phase == "restore" and vin in memory.paused:
                vehicles[vin] = "charging"
            else:
                vehicles[vin] = None
    return vehicles, decisions


def detect_override(
    tid: str,
    memory: PeakMemory,
    reading: ThermostatReading,
    phase: Phase,
    at: datetime | None = None,
) -> bool:
    """Whether a person changed a thermostat gridmate is holding (or was about to)."""
    if tid in memory.overridden or phase not in ("precool", "peak"):
        return False
    commanded = memory.commanded.get(tid)
    if commanded is not None:
        cool, heat, until = commanded
        if (
            until is not None
            and at is not None
            and at >= datetime.fromisoformat(until)
            and reading.hold == "schedule"
        ):
            # Our own hold ran out (precool ends at peak start): not a person.
            return False
        moved = (
            cool is not None
            and reading.cool_setpoint_f is not None
            and abs(cool - reading.cool_setpoint_f) >= SETPOINT_TOLERANCE_F
        ) or (
            heat is not None
            and reading.heat_setpoint_f is not None
            and abs(heat - reading.heat_setpoint_f) >= SETPOINT_TOLERANCE_F
        )
        return moved or reading.mode == "off"
    base = memory.baseline.thermostats.get(tid) if memory.baseline else None
    if base is None or tid in memory.touched:
        return False
    # Not touched yet, but no longer what it was before the block: a person's choice.
    if base.mode != reading.mode:
        return True
    for want, have in (
        (base.cool_setpoint_f, reading.cool_setpoint_f),
        (base.heat_setpoint_f, reading.heat_setpoint_f),
    ):
        if want is not None and have is not None and abs(want - have) >= SETPOINT_TOLERANCE_F:
            return True
    return False


def detect_powerwall_override(
    memory: PeakMemory, site: SiteReading, phase: Phase, config: PlannerConfig
) -> dict[str, tuple[Any, Any]]:
    """Settings a person changed during the peak: {setting: (gridmate wrote, read now)}.

    A setting counts as changed by hand when the read-back differs both from what
    gridmate last wrote for this block and from what the plan wants; a setting
    gridmate has not written (its write failed, or it is not needed) says nothing.
    """
    if phase != "peak" or memory.powerwall_overridden or not memory.powerwall_written:
        return {}
    wanted = {
        "backup_reserve_percent": config.reserve.peak_reserve_percent,
        "default_real_mode": _peak_mode(config.reserve),
    }
    seen = {"backup_reserve_percent": site.reserve_percent, "default_real_mode": site.mode}
    changed = {}
    for setting, written in memory.powerwall_written.items():
        now = seen.get(setting)
        if now is not None and now != written and now != wanted.get(setting):
            changed[setting] = (written, now)
    return changed


def minutes_between(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds() / 60.0


__all__ += [
    "Decision",
    "Phase",
    "detect_override",
    "detect_powerwall_override",
    "energy_shortfall",
    "minutes_between",
]
