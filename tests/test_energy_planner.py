"""The planner: a pure function from time, tariff, site, forecast and memory to a desired state."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from gridmate.energy.controls import Controls, effective_config
from gridmate.energy.planner import (
    Forecast,
    PeakMemory,
    PlannerConfig,
    SiteReading,
    ThermostatReading,
    VehicleReading,
    detect_override,
    detect_powerwall_override,
    ladder_level,
    plan,
)
from gridmate.energy.settings import ReserveSettings, ThermostatPolicy
from gridmate.energy.tariff.presets import PRESETS
from gridmate.energy.tariff.schedule import EventConfig, Schedule

PHOENIX = ZoneInfo("America/Phoenix")
SCHEDULE = Schedule(PRESETS["original"].versions, "America/Phoenix")
CONFIG = PlannerConfig(
    reserve=ReserveSettings(),
    policy=ThermostatPolicy(),
    thermostat_ids=("living",),
    ev_enabled=True,
)
HOT = Forecast(date(2026, 7, 1), 100.0, "nws")


def at(hour: int, minute: int = 0, day: int = 1, month: int = 7) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=PHOENIX)


def site(soc: float = 90.0, **changes) -> SiteReading:
    fields = {
        "soc_percent": soc,
        "load_kw": 2.0,
        "solar_kw": 0.0,
        "reserve_percent": 30,
        "mode": "autonomous",
        "thermostats": {"living": ThermostatReading("cool", 76.0, 68.0, 74.0, "schedule")},
    }
    fields.update(changes)
    return SiteReading(**fields)


def run_day(steps, forecast=HOT, config=CONFIG, memory=None):
    memory = memory or PeakMemory()
    plans = []
    for when, reading in steps:
        result = plan(when, SCHEDULE, reading, forecast, config, memory)
        memory = result.memory
        plans.append(result)
    return plans


# ---------------------------------------------------------------- ladder


@pytest.mark.parametrize(
    ("minutes", "soc", "level"),
    [
        (121, 10, 0),
        (120, 75.0, 1),
        (120, 75.1, 0),
        (61, 50, 1),
        (60, 50, 2),
        (60, 50.5, 1),
        (30, 25, 3),
        (31, 25, 2),
        (30, 25.5, 2),
        (10, 80, 0),
    ],
)
def test_ladder_thresholds_at_the_boundaries(minutes, soc, level):
    assert ladder_level(ThermostatPolicy(), minutes, soc) == level


def test_energy_rule_adds_a_step_early():
    policy = ThermostatPolicy()
    assert ladder_level(policy, 170, 90, energy_short=True) == 1
    assert ladder_level(policy, 170, 90, energy_short=False) == 0
    off = ThermostatPolicy(energy_rule=False)
    assert ladder_level(off, 170, 90, energy_short=True) == 0


def test_energy_rule_fires_when_the_house_outdraws_the_battery():
    # 30 % of 13.5 kWh = 4 kWh left; 3 hours at 2 kW need 6 kWh.
    result = plan(at(16, 0), SCHEDULE, site(soc=30), HOT, CONFIG, PeakMemory())
    ladder = [d for d in result.decisions if d.what == "ladder"]
    assert ladder and ladder[0].detail["energy_rule"] is True
    assert result.raise_f == 2.0
    assert result.thermostats["living"].cool_setpoint_f == 78.0
    # A big battery: no shortfall, no step.
    roomy = plan(at(16, 0), SCHEDULE, site(soc=90, capacity_kwh=27.0), HOT, CONFIG, PeakMemory())
    assert roomy.raise_f == 0.0


def test_ladder_climbs_through_the_peak_and_never_steps_back():
    plans = run_day(
        [
            (at(15, 35), site(90)),
            (at(16, 0), site(90, capacity_kwh=40)),
            (at(17, 0), site(74, capacity_kwh=40)),  # 120 minutes left, <= 75 %
            (at(18, 0), site(50, capacity_kwh=40)),
            (at(18, 10), site(60, capacity_kwh=40)),  # sun came out: keep the step
            (at(18, 30), site(25, capacity_kwh=40)),
        ]
    )
    assert [p.phase for p in plans] == ["precool", "peak", "peak", "peak", "peak", "peak"]
    assert [p.raise_f for p in plans[1:]] == [0.0, 2.0, 4.0, 4.0, 6.0]
    assert plans[-1].thermostats["living"].cool_setpoint_f == 82.0
    assert plans[-1].thermostats["living"].hold_until == at(19, 0)


# ---------------------------------------------------------------- precool


def test_precool_window_and_threshold():
    before = plan(at(15, 29), SCHEDULE, site(), HOT, CONFIG, PeakMemory())
    assert before.phase == "idle" and before.thermostats == {}
    during = plan(at(15, 30), SCHEDULE, site(), HOT, CONFIG, PeakMemory())
    assert during.phase == "precool"
    wish = during.thermostats["living"]
    assert wish.cool_setpoint_f == 73.0 and wish.hold == "until" and wish.hold_until == at(16)
    (decision,) = [d for d in during.decisions if d.what == "precool"]
    assert decision.detail["decided"] is True
    assert decision.detail["forecast_high_f"] == 100.0
    assert decision.detail["source"] == "nws"
    assert during.powerwall is None  # the battery is kept for the peak

    mild = plan(at(15, 45), SCHEDULE, site(), Forecast(date(2026, 7, 1), 94.9, "open_meteo"),
                CONFIG, PeakMemory())  # fmt: skip
    assert mild.thermostats["living"] is None
    at_threshold = plan(at(15, 45), SCHEDULE, site(), Forecast(date(2026, 7, 1), 95, "nws"),
                        CONFIG, PeakMemory())  # fmt: skip
    assert at_threshold.thermostats["living"].cool_setpoint_f == 73.0


def test_precool_reason_is_true_for_every_combination():
    def reason(config=CONFIG, forecast=HOT, when=None):
        result = plan(when or at(15, 40), SCHEDULE, site(), forecast, config, PeakMemory())
        (decision,) = [d for d in result.decisions if d.what == "precool"]
        return decision.detail["decided"], decision.detail["reason"]

    off = replace(CONFIG, policy=ThermostatPolicy(precool=False))
    # A hot day with precooling turned off: the text must not claim 100 < 95.
    assert reason(off) == (False, "precooling is turned off (policy.precool = false)")
    assert reason() == (True, "forecast high 100 °F >= 95 °F")
    mild = Forecast(date(2026, 7, 1), 94.9, "nws")
    assert reason(forecast=mild) == (False, "forecast high 94.9 °F < 95 °F")
    assert reason(forecast=None) == (False, "no forecast")
    assert reason(when=at(16, 5)) == (False, "peak already started")


def test_precool_lead_time_is_configurable():
    config = replace(CONFIG, policy=ThermostatPolicy(precool_lead_minutes=90))
    assert plan(at(14, 45), SCHEDULE, site(), HOT, config, PeakMemory()).phase == "precool"


def test_a_changed_precool_lead_is_seen_by_the_next_plan():
    # The lead belongs to the configuration it was made from: a configuration with
    # another policy brings its own, and the first keeps its.
    assert plan(at(14, 45), SCHEDULE, site(), HOT, CONFIG, PeakMemory()).phase == "idle"
    longer = replace(CONFIG, policy=CONFIG.policy.model_copy(update={"precool_lead_minutes": 90}))
    assert plan(at(14, 45), SCHEDULE, site(), HOT, longer, PeakMemory()).phase == "precool"
    assert plan(at(14, 45), SCHEDULE, site(), HOT, CONFIG, PeakMemory()).phase == "idle"
    shorter = replace(longer, policy=ThermostatPolicy(precool_lead_minutes=10))
    assert plan(at(15, 45), SCHEDULE, site(), HOT, shorter, PeakMemory()).phase == "idle"
    assert plan(at(15, 50), SCHEDULE, site(), HOT, shorter, PeakMemory()).phase == "precool"


def test_a_peak_reserve_set_from_home_assistant_is_planned_from_the_next_cycle():
    # The peak setting is kept with the configuration: the controls make a new one.
    today = date(2026, 7, 1)
    before = plan(at(16, 0), SCHEDULE, site(), HOT, CONFIG, PeakMemory())
    assert before.powerwall.reserve_percent == 0
    raised = effective_config(CONFIG, Controls(peak_reserve_percent=20), today)
    during = plan(at(16, 1), SCHEDULE, site(), HOT, raised, before.memory)
    assert (during.powerwall.reserve_percent, during.powerwall.mode) == (20, "self_consumption")
    full = effective_config(CONFIG, Controls(peak_reserve_percent=100), today)
    assert plan(at(16, 2), SCHEDULE, site(), HOT, full, during.memory).powerwall.mode == "backup"
    cleared = effective_config(CONFIG, Controls(), today)
    after = plan(at(16, 3), SCHEDULE, site(), HOT, cleared, during.memory)
    assert after.powerwall.reserve_percent == 0


def test_precool_decision_is_sticky_for_the_block():
    first = plan(at(15, 40), SCHEDULE, site(), HOT, CONFIG, PeakMemory())
    cooler = Forecast(date(2026, 7, 1), 80.0, "nws")
    later = plan(at(15, 50), SCHEDULE, site(), cooler, CONFIG, first.memory)
    assert later.thermostats["living"].cool_setpoint_f == 73.0


# ---------------------------------------------------------------- reserve


def test_reserve_drops_in_peak_and_is_restored_after():
    plans = run_day([(at(15, 40), site()), (at(16, 0), site())])
    peak = plans[-1]
    assert peak.powerwall.reserve_percent == 0
    assert peak.powerwall.mode == "self_consumption"
    memory = replace(peak.memory, powerwall_changed=True)
    after = plan(at(19, 1), SCHEDULE, site(reserve_percent=0, mode="self_consumption"), HOT,
                 CONFIG, memory)  # fmt: skip
    assert after.phase == "restore"
    assert (after.powerwall.reserve_percent, after.powerwall.mode) == (30, "autonomous")


def test_full_hold_uses_backup_mode_and_81_to_99_is_never_asked():
    config = replace(CONFIG, reserve=ReserveSettings(peak_reserve_percent=100))
    result = plan(at(16, 30), SCHEDULE, site(), HOT, config, PeakMemory())
    assert (result.powerwall.reserve_percent, result.powerwall.mode) == (100, "backup")
    memory = replace(result.memory, powerwall_changed=True)
    memory = replace(memory, baseline=replace(memory.baseline, reserve_percent=90))
    after = plan(at(20, 0), SCHEDULE, site(), HOT, config, memory)
    assert after.powerwall.reserve_percent == 80


def test_write_budget_too_small_skips_the_peak():
    result = plan(at(16, 30), SCHEDULE, site(), HOT, CONFIG, PeakMemory(), writes_left=3)
    assert result.powerwall is None
    assert any(d.what == "reserve" and d.detail["skipped"] for d in result.decisions)
    enough = plan(at(16, 30), SCHEDULE, site(), HOT, CONFIG, PeakMemory(), writes_left=4)
    assert enough.powerwall is not None


def test_start_mid_peak_without_memory_uses_the_fallback_when_settings_look_like_ours():
    reading = site(reserve_percent=0, mode="self_consumption")
    result = plan(at(17, 0), SCHEDULE, reading, HOT, CONFIG, PeakMemory())
    assert result.memory.baseline.reserve_percent == 20
    assert "fallback" in result.memory.baseline.note


def test_restart_mid_peak_reproduces_the_desired_state_from_persisted_memory():
    plans = run_day([(at(15, 40), site()), (at(16, 0), site()), (at(17, 0), site(70))])
    memory = replace(plans[-1].memory, powerwall_changed=True, touched=frozenset({"living"}))
    saved = memory.to_json()
    # The process restarts: the reading now shows gridmate's own changes.
    changed = site(
        68,
        reserve_percent=0,
        mode="self_consumption",
        thermostats={"living": ThermostatReading("cool", 78.0, 68.0, 75.0, "until")},
    )
    again = plan(at(17, 5), SCHEDULE, changed, HOT, CONFIG, PeakMemory.from_json(saved))
    before = plan(at(17, 5), SCHEDULE, changed, HOT, CONFIG, memory)
    assert again.powerwall == before.powerwall
    assert again.thermostats == before.thermostats
    assert again.memory == before.memory
    assert again.memory.baseline.reserve_percent == 30  # not the 0 it reads now


# ---------------------------------------------------------------- overrides


def test_manual_override_is_respected_and_not_restored():
    plans = run_day([(at(15, 40), site()), (at(16, 0), site()), (at(17, 0), site(70))])
    memory = replace(
        plans[-1].memory, touched=frozenset({"living"}), commanded={"living": (78.0, 68.0, None)}
    )
    someone = ThermostatReading("cool", 72.0, 68.0, 75.0, "permanent")
    assert detect_override("living", memory, someone, "peak")
    assert not detect_override("living", memory, replace(someone, cool_setpoint_f=78.0), "peak")
    memory = replace(memory, overridden=frozenset({"living"}))
    later = plan(at(18, 45), SCHEDULE, site(20), HOT, CONFIG, memory)
    assert later.thermostats["living"] is None
    after = plan(at(19, 5), SCHEDULE, site(20), HOT, CONFIG, memory)
    assert after.phase == "restore" and after.thermostats["living"] is None


def test_untouched_thermostat_changed_by_hand_counts_as_override():
    first = plan(at(15, 40), SCHEDULE, site(), Forecast(date(2026, 7, 1), 80, "nws"), CONFIG,
                 PeakMemory())  # fmt: skip
    reading = ThermostatReading("cool", 74.0, 68.0, 75.0, "permanent")
    assert detect_override("living", first.memory, reading, "peak")


def test_restore_puts_the_thermostat_back_on_its_schedule():
    plans = run_day([(at(15, 40), site()), (at(18, 40), site(20))])
    memory = replace(plans[-1].memory, touched=frozenset({"living"}))
    after = plan(at(19, 0), SCHEDULE, site(20), HOT, CONFIG, memory)
    wish = after.thermostats["living"]
    assert wish.hold == "schedule" and wish.cool_setpoint_f == 76.0
    assert wish.satisfied_by(ThermostatReading("cool", 80.0, 68.0, None, "schedule"))
    assert not wish.satisfied_by(ThermostatReading("cool", 82.0, 68.0, None, "until"))


# ---------------------------------------------------------------- winter and heating


def test_winter_has_two_peaks_and_heating_steps_down():
    heating = {"living": ThermostatReading("heat", None, 70.0, 69.0, "schedule")}
    morning = run_day(
        [
            (at(5, 40, day=14, month=1), site(90, thermostats=heating)),
            (at(8, 30, day=14, month=1), site(20, thermostats=heating)),
        ],
        forecast=Forecast(date(2026, 1, 14), 60, "nws"),
    )
    assert morning[0].phase == "precool" and morning[0].thermostats["living"] is None
    assert morning[1].phase == "peak" and morning[1].block[1] == at(9, day=14, month=1)
    assert morning[1].thermostats["living"].heat_setpoint_f == 64.0
    evening = plan(at(17, 30, day=14, month=1), SCHEDULE, site(thermostats=heating), None,
                   CONFIG, PeakMemory())  # fmt: skip
    assert evening.block == (at(17, day=14, month=1), at(20, day=14, month=1))


def test_weekend_is_idle():
    saturday = plan(at(17, 0, day=4), SCHEDULE, site(), HOT, CONFIG, PeakMemory())
    assert saturday.phase == "idle" and saturday.powerwall is None


# ---------------------------------------------------------------- cars


def test_ev_paused_in_peak_unless_solar_covers_it_and_resumed_after():
    charging = {"5YJ3": VehicleReading(charging=True, at_home=True, charge_power_kw=7.0)}
    result = plan(at(16, 5), SCHEDULE, site(load_kw=9.0, vehicles=charging), HOT, CONFIG,
                  PeakMemory())  # fmt: skip
    assert result.vehicles == {"5YJ3": "stopped"}
    sunny = plan(at(16, 5), SCHEDULE, site(load_kw=9.0, solar_kw=10.0, vehicles=charging), HOT,
                 CONFIG, PeakMemory())  # fmt: skip
    assert sunny.vehicles == {"5YJ3": None}
    away = {"5YJ3": VehicleReading(charging=True, at_home=False, charge_power_kw=7.0)}
    assert plan(at(16, 5), SCHEDULE, site(vehicles=away), HOT, CONFIG,
                PeakMemory()).vehicles == {"5YJ3": None}  # fmt: skip
    memory = replace(result.memory, paused=frozenset({"5YJ3"}))
    stopped = {"5YJ3": VehicleReading(charging=False, at_home=True)}
    after = plan(at(19, 2), SCHEDULE, site(vehicles=stopped), HOT, CONFIG, memory)
    assert after.vehicles == {"5YJ3": "charging"}


def test_ev_control_is_off_by_default():
    config = replace(CONFIG, ev_enabled=False)
    charging = {"5YJ3": VehicleReading(charging=True, charge_power_kw=7.0)}
    assert plan(at(16, 5), SCHEDULE, site(vehicles=charging), HOT, config,
                PeakMemory()).vehicles == {}  # fmt: skip


def test_idle_after_restore_clears_memory():
    memory = PeakMemory()
    result = plan(at(21, 0), SCHEDULE, site(), HOT, CONFIG, memory)
    assert result.phase == "idle" and result.memory == PeakMemory()


WROTE_BOTH = PeakMemory(
    powerwall_changed=True,
    powerwall_written={"backup_reserve_percent": 0, "default_real_mode": "self_consumption"},
)


def test_reserve_changed_in_the_app_during_peak_is_an_override():
    changed = detect_powerwall_override(
        WROTE_BOTH, site(reserve_percent=50, mode="self_consumption"), "peak", CONFIG
    )
    assert changed == {"backup_reserve_percent": (0, 50)}
    mode = detect_powerwall_override(
        WROTE_BOTH, site(reserve_percent=0, mode="backup"), "peak", CONFIG
    )
    assert mode == {"default_real_mode": ("self_consumption", "backup")}


def test_no_override_without_a_difference_a_write_or_a_peak():
    as_written = site(reserve_percent=0, mode="self_consumption")
    assert detect_powerwall_override(WROTE_BOTH, as_written, "peak", CONFIG) == {}
    # Only the mode was written (the reserve write failed): the old reserve is not a person.
    mode_only = PeakMemory(
        powerwall_changed=True, powerwall_written={"default_real_mode": "self_consumption"}
    )
    stale = site(reserve_percent=30, mode="self_consumption")
    assert detect_powerwall_override(mode_only, stale, "peak", CONFIG) == {}
    after = site(reserve_percent=30, mode="autonomous")
    assert detect_powerwall_override(WROTE_BOTH, after, "restore", CONFIG) == {}
    already = replace(WROTE_BOTH, powerwall_overridden=True)
    assert detect_powerwall_override(already, site(reserve_percent=50), "peak", CONFIG) == {}


def test_an_overridden_powerwall_is_left_alone_in_peak_and_not_restored():
    start = plan(at(16, 0), SCHEDULE, site(), HOT, CONFIG, PeakMemory())
    assert start.powerwall is not None  # gridmate's peak setting
    memory = replace(
        start.memory,
        powerwall_changed=True,
        powerwall_written=dict(WROTE_BOTH.powerwall_written),
        powerwall_overridden=True,
    )
    assert PeakMemory.from_json(memory.to_json()) == memory
    peak = plan(at(17, 0), SCHEDULE, site(reserve_percent=50), HOT, CONFIG, memory)
    assert peak.phase == "peak" and peak.powerwall is None
    after = plan(at(19, 5), SCHEDULE, site(reserve_percent=50), HOT, CONFIG, peak.memory)
    assert after.phase == "restore" and after.powerwall is None
    assert after.memory.restore_complete


# ---------------------------------------------------------------- energy rule: power branch


def test_energy_rule_power_branch_fires_above_the_battery_power_only():
    # 40 kWh at 90 %: energy is plenty, so only the power branch can fire.
    roomy = {"soc": 90.0, "capacity_kwh": 40.0, "max_power_kw": 5.0}
    above = plan(at(16, 0), SCHEDULE, site(load_kw=5.5, **roomy), HOT, CONFIG, PeakMemory())
    (ladder,) = [d for d in above.decisions if d.what == "ladder"]
    assert ladder.detail["energy_rule"] is True
    assert ladder.detail["house_kw"] == 5.5 and ladder.detail["battery_limit_kw"] == 5.0
    assert ladder.detail["needed_kwh"] < ladder.detail["available_kwh"]
    assert above.raise_f == 2.0
    # Exactly the battery's power is still covered: no step.
    at_limit = plan(at(16, 0), SCHEDULE, site(load_kw=5.0, **roomy), HOT, CONFIG, PeakMemory())
    assert at_limit.raise_f == 0.0
    assert not [d for d in at_limit.decisions if d.what == "ladder"]
    # Solar covering the excess: the house draws 7 - 2 = 5 kW from the battery.
    sunny = plan(at(16, 0), SCHEDULE, site(load_kw=7.0, solar_kw=2.0, **roomy), HOT, CONFIG,
                 PeakMemory())  # fmt: skip
    assert sunny.raise_f == 0.0
    # Two Powerwalls (10 kW) carry what one could not.
    two = plan(at(16, 0), SCHEDULE, site(load_kw=5.5, **{**roomy, "max_power_kw": 10.0}), HOT,
               CONFIG, PeakMemory())  # fmt: skip
    assert two.raise_f == 0.0
    # The rule switched off: the power branch adds nothing either.
    off = replace(CONFIG, policy=ThermostatPolicy(energy_rule=False))
    assert plan(at(16, 0), SCHEDULE, site(load_kw=9.0, **roomy), HOT, off,
                PeakMemory()).raise_f == 0.0  # fmt: skip


def test_a_car_being_paused_does_not_count_as_house_draw():
    # 1.3 kW house + 7.7 kW car: the car is paused in this very plan, so the battery
    # only has to carry 1.3 kW and the thermostats are not raised for the car.
    roomy = {"soc": 90.0, "capacity_kwh": 40.0, "max_power_kw": 5.0}
    car = {"5YJ3": VehicleReading(charging=True, at_home=True, charge_power_kw=7.7)}
    result = plan(at(16, 0), SCHEDULE, site(load_kw=9.0, vehicles=car, **roomy), HOT, CONFIG,
                  PeakMemory())  # fmt: skip
    assert result.vehicles == {"5YJ3": "stopped"}
    assert result.raise_f == 0.0
    assert result.memory.ladder_level == 0
    # A car gridmate leaves alone (charging away from home here) is real draw.
    away = {"5YJ3": VehicleReading(charging=True, at_home=False, charge_power_kw=7.7)}
    kept = plan(at(16, 0), SCHEDULE, site(load_kw=9.0, vehicles=away, **roomy), HOT, CONFIG,
                PeakMemory())  # fmt: skip
    assert kept.vehicles == {"5YJ3": None}
    assert kept.raise_f == 2.0


# ---------------------------------------------------------------- events and holidays


def event_schedule(*events: EventConfig, preset: str = "original") -> Schedule:
    return Schedule(PRESETS[preset].versions, "America/Phoenix", events)


def test_a_weekday_event_overlapping_the_peak_is_one_block():
    # 2026-07-01 is a Wednesday: regular peak 16-19, a critical peak event 14-17.
    schedule = event_schedule(
        EventConfig(date=date(2026, 7, 1), start="14:00", end="17:00", name="heat wave")
    )
    assert schedule.next_block(at(12, 0)) == (at(14, 0), at(19, 0))
    memory = PeakMemory()
    phases = {}
    for when in (at(13, 0), at(13, 30), at(14, 0), at(16, 30), at(17, 0), at(18, 59), at(19, 0)):
        result = plan(when, schedule, site(), HOT, CONFIG, memory)
        memory = result.memory
        if result.phase == "peak":  # as the reconciler records its verified write
            memory = replace(memory, powerwall_changed=True)
        phases[when.strftime("%H:%M")] = (result.phase, result.powerwall)
    assert phases["13:00"] == ("idle", None)
    assert phases["13:30"][0] == "precool"  # 30 minutes before the event, not before 16:00
    for hhmm in ("14:00", "16:30", "17:00", "18:59"):
        phase, powerwall = phases[hhmm]
        assert phase == "peak" and powerwall is not None
        assert (powerwall.reserve_percent, powerwall.mode) == (0, "self_consumption")
    phase, powerwall = phases["19:00"]
    assert phase == "restore" and powerwall is not None
    assert (powerwall.reserve_percent, powerwall.mode) == (30, "autonomous")
    # One baseline for the whole stretch, taken before the event.
    assert memory.baseline is not None
    assert (memory.baseline.block_start, memory.baseline.block_end) == (at(14, 0), at(19, 0))
    assert memory.baseline.captured_at == at(13, 30)


def test_a_holiday_is_idle_all_day_and_an_event_day_is_controlled():
    # APS: Labor Day (Monday 2026-09-07) is off-peak all day.
    holiday = event_schedule(preset="aps-tou-4pm-7pm")
    labor_day = [datetime(2026, 9, 7, h, m, tzinfo=PHOENIX) for h in range(24) for m in (0, 30)]
    assert {plan(when, holiday, site(), HOT, CONFIG, PeakMemory()).phase
            for when in labor_day} == {"idle"}  # fmt: skip
    tuesday = plan(datetime(2026, 9, 8, 16, 30, tzinfo=PHOENIX), holiday, site(), HOT, CONFIG,
                   PeakMemory())  # fmt: skip
    assert tuesday.phase == "peak"
    # A Saturday critical peak event: controlled like a weekday peak.
    saturday = date(2026, 7, 4)
    event = event_schedule(EventConfig(date=saturday, start="15:00", end="18:00"))
    result = plan(datetime(2026, 7, 4, 15, 10, tzinfo=PHOENIX), event, site(), HOT, CONFIG,
                  PeakMemory())  # fmt: skip
    assert result.phase == "peak" and result.period == "peak"
    assert result.powerwall is not None and result.powerwall.reserve_percent == 0
    assert result.block == (
        datetime(2026, 7, 4, 15, 0, tzinfo=PHOENIX),
        datetime(2026, 7, 4, 18, 0, tzinfo=PHOENIX),
    )
    assert plan(datetime(2026, 7, 4, 15, 10, tzinfo=PHOENIX), SCHEDULE, site(), HOT, CONFIG,
                PeakMemory()).phase == "idle"  # fmt: skip
