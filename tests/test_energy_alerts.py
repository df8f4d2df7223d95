"""When a peak or an API becomes a condition worth a message, and when it is over (pure)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from gridmate.energy.alerts import (
    ApiStatus,
    Change,
    Observation,
    Watch,
    api_observations,
    evaluate,
    peak_observations,
    step,
    token_changes,
)
from gridmate.energy.planner import DesiredPowerwall, PeakMemory, Plan, SiteReading
from gridmate.notify import EventKind

T0 = datetime(2026, 7, 1, 23, 0, tzinfo=UTC)  # 16:00 in Phoenix
BLOCK = (T0, T0 + timedelta(hours=3))
SITE = "site 1"


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def peak_plan(at: datetime, *, phase: str = "peak", memory: PeakMemory | None = None) -> Plan:
    return Plan(
        at=at,
        phase=phase,  # type: ignore[arg-type]
        period="peak" if phase == "peak" else "off_peak",
        block=BLOCK,
        powerwall=DesiredPowerwall(0, "self_consumption", "peak"),
        thermostats={},
        vehicles={},
        decisions=(),
        memory=memory or PeakMemory(),
        minutes_left=(BLOCK[1] - at).total_seconds() / 60 if phase == "peak" else None,
    )


def site(soc: float, grid_kw: float, load_kw: float = 2.0, reserve: int = 0) -> SiteReading:
    return SiteReading(
        soc_percent=soc, load_kw=load_kw, grid_kw=grid_kw, battery_kw=load_kw - grid_kw,
        reserve_percent=reserve, mode="self_consumption", max_power_kw=5.0,
    )  # fmt: skip


def observe(at: datetime, reading: SiteReading, phase: str = "peak") -> list[Observation]:
    return peak_observations(
        peak_plan(at, phase=phase),
        reading,
        site_key=SITE,
        peak_reserve_percent=0,
        grid_import_kw=0.5,
        grid_import_minutes=5.0,
        floor_margin_percent=1.0,
    )


def run(steps: list[tuple[datetime, SiteReading, str]]) -> list[tuple[str, EventKind]]:
    watches: dict = {}
    seen = []
    for at, reading, phase in steps:
        watches, changes = evaluate(watches, observe(at, reading, phase), at)
        seen += [(c.action, c.kind) for c in changes]
    return seen


def test_one_sample_of_grid_import_is_not_a_condition():
    steps = [(minutes(n), site(60, 0.0), "peak") for n in range(5)]
    steps.append((minutes(5), site(60, 2.0), "peak"))
    steps += [(minutes(n), site(60, 0.0), "peak") for n in range(6, 20)]
    assert run(steps) == []


def test_sustained_grid_import_opens_once_and_resolves_when_it_stops():
    steps = [(minutes(n), site(60, 1.2, load_kw=6.5), "peak") for n in range(0, 12)]
    steps += [(minutes(n), site(60, 0.0), "peak") for n in range(12, 15)]
    assert run(steps) == [
        ("open", EventKind.grid_import_during_peak),
        ("resolve", EventKind.grid_import_during_peak),
    ]


def test_grid_import_outside_the_peak_is_nobodys_business():
    steps = [(minutes(n), site(60, 3.0), "restore") for n in range(0, 30)]
    assert run(steps) == []


def test_the_reason_for_grid_import_is_named():
    heavy = observe(minutes(10), site(60, 1.5, load_kw=6.5))[1]
    assert "more than the battery's 5.0 kW" in heavy.facts["why"]
    empty = observe(minutes(10), site(0.5, 2.0))[1]
    assert empty.facts["why"] == "the battery is at its floor"
    left_alone = peak_observations(
        peak_plan(minutes(10), memory=PeakMemory(powerwall_overridden=True)),
        site(60, 1.0, reserve=40),
        site_key=SITE, peak_reserve_percent=0, grid_import_kw=0.5,
        grid_import_minutes=5.0, floor_margin_percent=1.0,
    )[1]  # fmt: skip
    assert "changed by hand" in left_alone.facts["why"]


def test_battery_at_its_floor_before_the_peak_ends_opens_at_once_and_resolves_at_peak_end():
    steps = [(minutes(n), site(60 - n, 0.0), "peak") for n in range(0, 60, 10)]
    steps += [(minutes(170), site(0.8, 2.0), "peak"), (minutes(175), site(0.5, 2.0), "peak")]
    steps += [(minutes(181), site(0.5, 2.0), "restore")]
    assert [c for c in run(steps) if c[1] is EventKind.battery_floor_before_peak_end] == [
        ("open", EventKind.battery_floor_before_peak_end),
        ("resolve", EventKind.battery_floor_before_peak_end),
    ]


def test_the_floor_is_the_reserve_gridmate_sets_or_else_the_one_the_battery_has():
    # The first peak reading still shows the pre-peak 30 %: not a floor at 12 %.
    assert not observe(minutes(0), site(12.0, 4.0, reserve=30))[0].bad
    # A person set 40 % in the app: gridmate leaves the Powerwall alone and the
    # battery stops there, not at the peak reserve.
    overridden = PeakMemory(powerwall_overridden=True)
    plan = replace(peak_plan(minutes(30), memory=overridden), powerwall=None)

    def floor_seen(soc: float) -> Observation:
        return peak_observations(
            plan, site(soc, 2.0, reserve=40), site_key=SITE, peak_reserve_percent=0,
            grid_import_kw=0.5, grid_import_minutes=5.0, floor_margin_percent=1.0,
        )[0]  # fmt: skip

    assert floor_seen(40.5).bad and floor_seen(40.5).facts["floor"] == 40.0
    assert not floor_seen(45.0).bad


def test_step_keeps_the_start_of_a_bad_stretch():
    watch, change = step(Watch(), minutes(0), True, 300)
    assert (watch, change) == (Watch(since=minutes(0)), None)
    watch, change = step(watch, minutes(5), True, 300)
    assert (watch, change) == (Watch(since=minutes(0), open=True), "open")
    watch, change = step(watch, minutes(6), True, 300)
    assert change is None and watch.open
    assert step(watch, minutes(7), False, 300) == (Watch(), "resolve")


def api_run(states: list[ApiStatus], every: float = 60.0) -> list[tuple[str, EventKind]]:
    watches: dict = {}
    seen = []
    for index, status in enumerate(states):
        at = T0 + timedelta(seconds=every * index)
        watches, changes = evaluate(watches, api_observations([status], 600.0), at)
        seen += [(c.action, c.kind) for c in changes]
    return seen


def test_an_api_failing_for_ten_minutes_is_reported_and_one_success_clears_it():
    failing = ApiStatus("weather", "failing", "503")
    ok = ApiStatus("weather", "ok")
    assert api_run([failing] * 9 + [ok] + [failing] * 9 + [ok]) == []
    assert api_run([failing] * 11 + [ok]) == [
        ("open", EventKind.api_failure),
        ("resolve", EventKind.api_failure),
    ]


def test_a_long_retry_after_is_reported_at_once_a_short_one_not_at_all():
    long_wait = ApiStatus("tesla_energy", "rate_limited", "429", 3600.0)
    assert api_run([long_wait, ApiStatus("tesla_energy", "ok")]) == [
        ("open", EventKind.api_rate_limited),
        ("resolve", EventKind.api_rate_limited),
    ]
    short = ApiStatus("tesla_energy", "rate_limited", "429", 60.0)
    assert api_run([short, ApiStatus("tesla_energy", "ok")] * 5) == []


def test_a_retry_after_beyond_the_cap_is_reported_at_once_however_short_the_cap():
    capped = ApiStatus("tesla_energy", "rate_limited", "429", 300.0, capped=True)
    assert api_run([capped, ApiStatus("tesla_energy", "ok")]) == [
        ("open", EventKind.api_rate_limited),
        ("resolve", EventKind.api_rate_limited),
    ]


def test_conditions_left_open_by_a_previous_run_resolve_on_the_first_good_cycle():
    watches = {(EventKind.api_failure, "weather"): Watch(open=True)}
    watches, changes = evaluate(watches, api_observations([ApiStatus("weather", "ok")], 600.0), T0)
    assert [(c.action, c.kind, c.key) for c in changes] == [
        ("resolve", EventKind.api_failure, "weather")
    ]
    assert watches == {}


def test_unobserved_conditions_keep_their_state():
    watches = {(EventKind.grid_import_during_peak, SITE): Watch(since=T0, open=True)}
    assert evaluate(watches, [], minutes(30)) == (watches, [])


def test_token_events_open_and_resolve_token_conditions():
    facts = {"detail": "x"}
    assert token_changes("failing", "oauth", facts) == [
        Change("open", EventKind.token_failing, "tesla oauth", facts)
    ]
    assert token_changes("expiring", "oauth", facts) == [
        Change("open", EventKind.token_expiring, "tesla oauth", facts)
    ]
    assert [(c.action, c.kind) for c in token_changes("recovered", "teslamate", facts)] == [
        ("resolve", EventKind.token_failing),
        ("resolve", EventKind.token_expiring),
    ]
